-- Facts about this deployment, shared by every replica of it. `cluster_id` names the
-- deployment on a shared Redis, so two deployments on one Redis never hear each other.
CREATE TABLE cluster_meta (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
