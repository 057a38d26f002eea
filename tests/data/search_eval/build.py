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
                themes.append((topic, line[2:].strip(), [], []))
            elif line.startswith("= "):
                themes[-1][2].extend(t.strip() for t in line[2:].split("|"))
            elif line.startswith("- "):
                themes[-1][3].append(line[2:].strip())
            else:
                raise SystemExit(f"bad line in {path.name}: {line!r}")
    return themes


def compose_filler(themes, count, rng):
    """`count` posts of 1-4 sentences, each from one theme. No two posts have the same set of
    sentences, a pair of sentences appears in at most three posts, no author has two posts
    sharing more than one sentence, and a one-sentence post's sentence appears in no other post
    of its author (the hub's near-duplicate check is per author)."""
    posts = []
    combos = set()
    pair_uses = Counter()
    author_pairs = defaultdict(set)
    single_used = set()
    author_sentences = defaultdict(Counter)
    author_singles = defaultdict(set)
    per_theme = [count // len(themes) + (1 if i < count % len(themes) else 0) for i in range(len(themes))]
    for ti, ((topic, _, titles, sentences), want) in enumerate(zip(themes, per_theme)):
        made, tries = 0, 0
        while made < want:
            tries += 1
            if tries > 20000:
                raise SystemExit(f"cannot make {want} posts from theme {titles[0]!r} (made {made})")
            author = rng.choice(authors_of(topic))
            _, openers, closers = AUTHORS[author]
            k = rng.choices([1, 2, 3, 4], weights=[15, 50, 30, 5])[0]
            chosen = [(ti, i) for i in rng.sample(range(len(sentences)), k)]
            key = frozenset(chosen)
            pairs = {frozenset(p) for p in itertools.combinations(chosen, 2)}
            if key in combos or any(pair_uses[p] >= 3 for p in pairs) or pairs & author_pairs[author]:
                continue
            if k == 1 and (chosen[0] in single_used or author_sentences[author][chosen[0]]):
                continue
            if any(s in author_singles[author] for s in chosen):
                continue
            combos.add(key)
            for p in pairs:
                pair_uses[p] += 1
            author_pairs[author] |= pairs
            if k == 1:
                single_used.add(chosen[0])
                author_singles[author].add(chosen[0])
            author_sentences[author].update(chosen)
            parts = [sentences[i] for _, i in chosen]
            if k < 4 and rng.random() < 0.3:
                parts.insert(0, rng.choice(openers))
            if len(parts) < 4 and rng.random() < 0.3:
                parts.append(rng.choice(closers))
            body = " ".join(parts)
            posts.append({"topic": topic, "title": rng.choice(titles), "body": body, "author": author})
            made += 1
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
