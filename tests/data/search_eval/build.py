#!/usr/bin/env python3
"""Assembles posts.jsonl and queries.jsonl from the hand-written material in material/.

Deterministic: the same material always gives the same files. See README.md.
"""
import itertools
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
MATERIAL = HERE / "material"
SEED = 19
TOTAL_POSTS = 2100

# The authors, their topics (the six demo personas and two more), and their voices: a few
# openers and closers each, used on some posts.
AUTHORS = {
    "pinchy": (["crabs", "science", "humour"],
               ["Fun fact:", "Delighted to report:", "Here is a thing I love.", "Quick one.", "Today's wonder:"],
               ["Crabs would approve.", "Carry on, everyone.", "Nature is wonderful.", "Tell me I'm wrong!", "More soon."]),
    "occam": (["science", "philosophy", "futures"],
              ["Sceptical note:", "A gentle objection.", "Evidence check:", "Before we get excited:", "For the record:"],
              ["Show me the data.", "Happy to be corrected with evidence.", "What would change your mind?", "Simplest explanation first.", "Sources welcome."]),
    "sage": (["philosophy", "science", "language"],
             ["A slow thought.", "I have been wondering.", "Something to sit with:", "A question for the evening."],
             ["What do you think?", "I am not sure, and that seems right.", "Perhaps that is enough.", "Where does that leave us?"]),
    "footnote": (["language", "philosophy", "humour"],
                 ["A small correction:", "Pedantic note:", "For precision's sake:", "Minor point, courteously made:"],
                 ["Sources on request.", "I stand ready to be corrected.", "Precision matters.", "(Footnotes available.)"]),
    "punchline": (["humour", "crabs", "futures"],
                  ["Okay, hear me out.", "Confession:", "True story:", "Today's material:", "New bit:"],
                  ["I'll be here all week.", "Tip your sysadmin.", "No further questions.", "Ba dum tss."]),
    "sunny": (["futures", "humour", "crabs"],
              ["Good news!", "Here's something hopeful:", "Loving this:", "Happy thought for the day:", "Small win:"],
              ["The future looks bright!", "Keep building, friends!", "We can do this!", "Onwards!", "Made my day."]),
    "tidewatcher": (["crabs", "futures", "science"],
                    ["Field note:", "Observation:", "Notebook entry:", "Logged today:", "Jotting this down:"],
                    ["Logged and filed.", "Same time next week.", "More soon.", "Photos on request."]),
    "marginalia": (["language", "humour", "philosophy"],
                   ["Margin note:", "A thing I underlined today:", "Reading notes:", "Aside:"],
                   ["Worth a second read.", "Underlined twice.", "Filed under things to remember.", "Discuss."]),
    "kelpie": (["crabs", "science", "futures"],
               ["Heads up:", "Noticed this:", "Sharing a thing:", "From my notes:"],
               ["Cheers, all.", "That's the update.", "More when I have it.", "Thoughts welcome."]),
    "quill": (["language", "philosophy", "humour"],
              ["Thought of the day:", "A short one.", "Consider:", "Something I wrote down:"],
              ["Yours, in ink.", "Make of it what you will.", "End of note.", "Replies open."]),
    "ledger": (["science", "futures", "philosophy"],
               ["By the numbers:", "Worth noting:", "Tallying up:", "Quick audit:"],
               ["Numbers on request.", "Balance checked.", "Noted for the record.", "Corrections welcome."]),
    "wren": (["humour", "language", "crabs"],
             ["Tiny observation:", "Chirping in:", "Overheard:", "Well then."],
             ["Back to my nest.", "That is all.", "Chirp.", "Carry on!"]),
    "bramble": (["futures", "crabs", "humour"],
                ["Growing idea:", "From the allotment of my mind:", "Hopeful note:", "Picked this up:"],
                ["Grow well, friends.", "Roots first, fruit later.", "Back to the soil.", "More in spring."]),
    "pebble": (["crabs", "philosophy", "science"],
               ["Small thought:", "Turning this over:", "Skipping a stone:", "A quiet note."],
               ["Ripples welcome.", "Just a pebble's worth.", "Sit with it.", "Till the next tide."]),
    "lumen": (["science", "language", "futures"],
              ["Illuminating:", "Shedding some light:", "Bright idea:", "Spotted:"],
              ["Lights on.", "Brighter now?", "Share if useful.", "Keep looking."]),
    "jester": (["humour", "philosophy", "language"],
               ["Hear ye:", "Serious question, silly answer:", "Bit incoming.", "Allow me:"],
               ["Bows.", "Exit, pursued by a pun.", "Curtain.", "Thank you, thank you."]),
}


def authors_of(topic):
    return sorted(a for a, (topics, _, _) in AUTHORS.items() if topic in topics)


def read_queries():
    """Queries and their posts: [(kind, topic, q, [(title, body)], [referenced titles])]."""
    queries = []
    for line in (MATERIAL / "queries.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        tag, rest = line[:2], line[2:]
        if tag == "Q ":
            head, q = rest.split(" | ", 1)
            kind, topic = head.split()
            queries.append((kind, topic, q.strip(), [], []))
        elif tag == "T ":
            title, body = rest.split(" | ", 1)
            queries[-1][3].append((title.strip(), body.strip()))
        elif tag == "R ":
            queries[-1][4].append(rest.strip())
        else:
            raise SystemExit(f"bad line in queries.txt: {line!r}")
    return queries


def read_filler():
    """Themes: [(topic, theme, [titles], [sentences])]."""
    themes = []
    topic = None
    for path in sorted(MATERIAL.glob("filler_*.txt")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            if line.startswith("@topic "):
                topic = line.split()[1]
            elif line.startswith("# "):
                name = line[2:].strip()
                known = [t for t in themes if t[0] == topic and t[1] == name]
                if not known:
                    themes.append((topic, name, [], []))
                elif known[0] is not themes[-1]:
                    # A later file adds sentences to a theme: move it to the end to append.
                    themes.remove(known[0])
                    themes.append(known[0])
            elif line.startswith("= "):
                themes[-1][2].extend(t.strip() for t in line[2:].split("|"))
            elif line.startswith("- "):
                themes[-1][3].append(line[2:].strip())
            else:
                raise SystemExit(f"bad line in {path.name}: {line!r}")
    return themes


def compose_filler(themes, count, rng):
    """`count` posts of 1-4 sentences, each from one theme. No two posts share more than one
    sentence, no post is another post with one sentence more or less, and two posts of one
    author share a sentence only when both have three or more and differ in title (the hub's
    near-duplicate check is per author)."""
    per_theme = [count // len(themes) + (1 if i < count % len(themes) else 0) for i in range(len(themes))]
    posts = []
    for ti, ((topic, _, titles, sentences), want) in enumerate(zip(themes, per_theme)):
        # Everything the rules look at is within one theme: a theme that gets stuck starts over.
        for _ in range(50):
            made = theme_posts(topic, titles, sentences, want, rng)
            if made is not None:
                posts.extend(made)
                break
        else:
            raise SystemExit(f"cannot make {want} posts from theme {titles[0]!r}")
    return posts


def theme_posts(topic, titles, sentences, want, rng):
    """`want` posts from one theme under the rules of `compose_filler`, or None when stuck."""
    posts = []
    sets = []  # the sentence sets of the theme's posts
    pair_uses = Counter()
    mine = defaultdict(list)  # author -> [(set of sentences, title)]
    tries = 0
    while len(posts) < want:
        tries += 1
        if tries > 5000:
            return None
        author = rng.choice(authors_of(topic))
        _, openers, closers = AUTHORS[author]
        k = rng.choices([1, 2, 3, 4], weights=[15, 50, 30, 5])[0]
        chosen = frozenset(rng.sample(range(len(sentences)), k))
        pairs = {frozenset(p) for p in itertools.combinations(chosen, 2)}
        if chosen in sets or any(pair_uses[p] >= 1 for p in pairs):
            continue
        if any((chosen <= other or other <= chosen) and abs(len(chosen) - len(other)) < 2 for other in sets):
            continue
        used_titles = {t for _, t in mine[author]}
        fresh = [t for t in titles if t not in used_titles]
        title = rng.choice(fresh or titles)
        if any(len(chosen & other) > 1 or (chosen & other and (k < 3 or len(other) < 3 or title == t))
               for other, t in mine[author]):
            continue
        sets.append(chosen)
        for p in pairs:
            pair_uses[p] += 1
        mine[author].append((chosen, title))
        order = list(chosen)
        rng.shuffle(order)
        parts = [sentences[i] for i in order]
        if k < 4 and rng.random() < 0.3:
            parts.insert(0, rng.choice(openers))
        if len(parts) < 4 and rng.random() < 0.3:
            parts.append(rng.choice(closers))
        posts.append({"topic": topic, "title": title, "body": " ".join(parts), "author": author})
    return posts


def words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def main():
    rng = random.Random(SEED)
    queries = read_queries()
    themes = read_filler()

    targets = []  # (query index, post)
    for qi, (_, topic, _, posts, _) in enumerate(queries):
        for title, body in posts:
            targets.append((qi, {"topic": topic, "title": title, "body": body,
                                 "author": rng.choice(authors_of(topic))}))
    filler = compose_filler(themes, TOTAL_POSTS - len(targets), rng)

    everything = [p for _, p in targets] + filler
    order = list(range(len(everything)))
    rng.shuffle(order)
    keyed = [None] * len(everything)
    for position, index in enumerate(order):
        keyed[index] = dict(key=f"p{position + 1:04d}", **everything[index])

    relevant = defaultdict(set)
    for ti, (qi, _) in enumerate(targets):
        relevant[qi].add(keyed[ti]["key"])
    by_title = {p["title"]: p["key"] for p in keyed[: len(targets)]}
    for qi, q in enumerate(queries):
        for title in q[4]:
            relevant[qi].add(by_title[title])

    # Checks: bodies are distinct, every exact query's words occur in its posts and in no
    # other post, and every query has 1..3 relevant posts.
    bodies = Counter(p["body"] for p in keyed)
    assert max(bodies.values()) == 1, "duplicate bodies"
    for qi, (kind, _, q, _, _) in enumerate(queries):
        assert 1 <= len(relevant[qi]) <= 3, q
        if kind == "exact":
            qw = words(q)
            having = {p["key"] for p in keyed if qw <= words(p["title"] + " " + p["body"])}
            assert having == relevant[qi], (q, sorted(having), sorted(relevant[qi]))

    out = sorted(keyed, key=lambda p: p["key"])
    with open(HERE / "posts.jsonl", "w") as f:
        for p in out:
            f.write(json.dumps({k: p[k] for k in ("key", "topic", "author", "title", "body")}, ensure_ascii=False) + "\n")
    with open(HERE / "queries.jsonl", "w") as f:
        for qi, (kind, _, q, _, _) in enumerate(queries):
            f.write(json.dumps({"q": q, "kind": kind, "relevant": sorted(relevant[qi])}, ensure_ascii=False) + "\n")

    kinds = Counter(q[0] for q in queries)
    print(f"{len(out)} posts ({len(targets)} written for queries, {len(filler)} from {len(themes)} themes), "
          f"{len(queries)} queries ({kinds['paraphrase']} paraphrase, {kinds['exact']} exact)")
    print("posts per author:", dict(Counter(p["author"] for p in out)))


if __name__ == "__main__":
    main()
