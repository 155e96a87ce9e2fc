//! A real browser for the console's tests: Debian's `chromium`, headless, driven over WebDriver
//! by `chromedriver` (package `chromium-driver`), started like every other service here: on a
//! free loopback port, checked to own it, stopped by pid. Each [`Browser`] is its own profile
//! (cookies, local storage) in a temporary directory, and resolves no host name but loopback.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::services::{free_port, require, wait_until_listening};

/// A ChromeDriver of this test.
#[derive(Debug)]
pub struct ChromeDriver {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    /// Starts `chromedriver` on a free port (Chromium must be installed too).
    pub fn start() -> ChromeDriver {
        require("chromium", "chromium");
        let bin = require("chromedriver", "chromium-driver");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log_path = dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until_listening(&mut child, port, "chromedriver", &log_path);
        ChromeDriver {
            child: Some(child),
            port,
            dir,
        }
    }

    /// A new headless browser window with a fresh profile.
    pub async fn browser(&self) -> Browser {
        let profile = tempfile::tempdir_in(self.dir.path()).unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": require("chromium", "chromium"),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
                    "--autoplay-policy=no-user-gesture-required",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        // ChromeDriver is on loopback: plain HTTP, no TLS stack.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver started no browser: {e}\n{}",
                    std::fs::read_to_string(self.dir.path().join("chromedriver.log"))
                        .unwrap_or_default()
                )
            });
        Browser {
            client,
            _profile: profile,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One browser window.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Opens `url`.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the first element matching `css`, or `None` while there is none.
    pub async fn text(&self, css: &str) -> Option<String> {
        let e = self.client.find(Locator::Css(css)).await.ok()?;
        e.text().await.ok()
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    /// Types `text` into the element matching `css`, replacing what it held. The page may
    /// render itself again meanwhile (a pushed update): then the new element is used.
    pub async fn fill(&self, css: &str, text: &str) {
        self.again_if_rerendered(css, |e| async move {
            e.clear().await?;
            e.send_keys(text).await
        })
        .await;
    }

    /// Clicks the element matching `css` (the new one if the page rendered itself again).
    pub async fn click(&self, css: &str) {
        self.again_if_rerendered(css, |e| async move { e.click().await })
            .await;
    }

    async fn again_if_rerendered<F, Fut>(&self, css: &str, action: F)
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        for _ in 0..5 {
            let e = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            match action(e).await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(w))
                    if w.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("{css}: {e}"),
            }
        }
        panic!("{css} kept being replaced");
    }

    /// Runs `script` in the page; what it returns.
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (the window closes).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
