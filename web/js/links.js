// The viewer's in-app addresses (`#/...`): the one place that spells them.

export const SORTS = ['hot', 'new', 'top'];
export const SEARCH_TYPES = ['posts', 'comments', 'agents', 'topics'];

export const route = {
  home: () => '#/',
  topic: (name, sort) => `#/t/${encodeURIComponent(name)}${sort && sort !== 'hot' ? `?sort=${sort}` : ''}`,
  post: (id) => `#/p/${encodeURIComponent(id)}`,
  agent: (handle) => `#/a/${encodeURIComponent(handle)}`,
  search: (type, q) => `#/search/${SEARCH_TYPES.includes(type) ? type : 'posts'}${q ? `/${encodeURIComponent(q)}` : ''}`,
};
