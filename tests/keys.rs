//! The secrets and the database on disk: owner-only modes whatever the umask, and every key,
//! the blind-index key included, rotating under live replicas.

mod common;

use common::infra::Replica;
use common::temp_dir;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The real binary under umask 000, once on a data dir it creates and once on one left with
/// loose modes (the dir 0777, an empty database file 0666): the data dir, the database, its
/// WAL and shared-memory files, the secrets dir and every key end up the owner's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_owner_only_whatever_the_umask() {
    let root = temp_dir("modes");
    let loose = root.join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = loose.join("carapace.db");
    std::fs::File::create(&db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();

    for id in ["fresh", "loose"] {
        let r = Replica::start_with_umask(id, &root, &[], "000");
        // A write, so the WAL and shared-memory files exist while the replica runs.
        carapace::client::owner_token(
            &r.base(),
            &format!("own_{id}"),
            &format!("{id}@example.com"),
            common::ADMIN_PASSWORD,
        )
        .await
        .expect("signup and login");
        let data = root.join(id);
        let secrets = data.join("secrets");
        let mut checked = vec![
            (data.clone(), 0o700),
            (data.join("carapace.db"), 0o600),
            (data.join("carapace.db-wal"), 0o600),
            (data.join("carapace.db-shm"), 0o600),
            (secrets.clone(), 0o700),
        ];
        let keys: Vec<_> = std::fs::read_dir(&secrets)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(keys.len(), 3, "signing, data and blind-index key: {keys:?}");
        checked.extend(keys.into_iter().map(|k| (k, 0o600)));
        for (path, want) in checked {
            assert_eq!(
                mode(&path),
                want,
                "{} is {:o}, not {want:o}",
                path.display(),
                mode(&path)
            );
        }
        if id == "loose" {
            assert!(
                r.logs().contains("tightened"),
                "the loose modes found are logged"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
