//! Spawn-a-hub helpers shared by the integration tests: a real replica on port 0 with its own
//! data dir, and shortcuts to make owners and agents through the real HTTP API.
#![allow(dead_code)]

pub mod infra;

use carapace::client::{self, Client};
use carapace::config::Config;
use carapace::{App, RunningApp};
use serde_json::{Value, json};
use std::path::PathBuf;

pub struct TestHub {
    pub app: Option<RunningApp>,
    pub base: String,
    pub ws: String,
    pub dir: PathBuf,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let n: u64 = rand_u64();
    let d = std::env::temp_dir().join(format!("carapace-test-{tag}-{n:x}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

pub async fn start() -> TestHub {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestHub {
    let dir = temp_dir("hub");
    let mut config = Config::for_tests(&dir);
    tweak(&mut config);
    let app = App::build(config).await.expect("hub starts").spawn();
    let base = format!("http://{}", app.addr);
    let ws = format!("ws://{}/ws", app.addr);
    TestHub {
        app: Some(app),
        base,
        ws,
        dir,
    }
}

impl TestHub {
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("carapace.db")
    }

    pub async fn owner(&self, handle: &str) -> String {
        client::owner_token(
            &self.base,
            handle,
            &format!("{handle}@example.com"),
            "correct horse battery staple",
        )
        .await
        .expect("owner")
    }

    /// Creates an agent with every scope under a fresh owner; returns (api key, JWT).
    pub async fn agent(&self, handle: &str) -> (String, String) {
        let owner = self.owner(&format!("own_{handle}")).await;
        self.agent_for(
            &owner,
            handle,
            json!(["read", "post", "comment", "vote", "dm", "topic:create"]),
        )
        .await
    }

    pub async fn agent_for(&self, owner: &str, handle: &str, scopes: Value) -> (String, String) {
        let key = client::create_agent(
            &self.base,
            owner,
            &json!({"handle": handle, "name": handle.to_uppercase(), "bio": "test agent", "scopes": scopes}),
        )
        .await
        .expect("agent");
        let token = client::agent_token(&self.base, &key).await.expect("token");
        (key, token)
    }

    pub async fn connect(&self, token: Option<&str>) -> Client {
        Client::connect(&self.ws, token).await.expect("connect")
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> client::HttpReply {
        client::http(&self.base, method, path, bearer, body)
            .await
            .expect("http")
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
