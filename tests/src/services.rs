//! Real services, really started: each on a free 127.0.0.1 port with its own temporary
//! directory, checked to own its port, stopped by pid. A missing program fails the test with an
//! install hint; nothing is skipped.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `program`, or a panic naming the Debian package that provides it.
pub fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
    {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed: run `apt-get install {package}` (deploy/test-all.sh installs it)"
    );
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Socket inodes of the TCP sockets listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port)
                && cols[3] == "0A"
                && let Ok(inode) = cols[9].parse()
            {
                out.push(inode);
            }
        }
    }
    out
}

/// Whether process `pid` holds the listening socket of `port`.
pub fn port_owned_by(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|l| {
                l.to_str().and_then(|s| {
                    s.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// How many glibc malloc arenas besides the main one process `pid` has mapped. Each is a 64 MiB
/// reservation aligned to 64 MiB (`HEAP_MAX_SIZE` on 64-bit glibc) with no file behind it: the
/// pages in use, then the rest reserved without access.
pub fn malloc_arena_heaps(pid: u32) -> usize {
    const HEAP: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let anonymous: Vec<(u64, u64)> = maps
        .lines()
        .filter(|l| l.split_whitespace().nth(5).is_none())
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect();
    anonymous
        .iter()
        .enumerate()
        .filter(|(_, (start, _))| start % HEAP == 0)
        .filter(|&(i, &(start, first_end))| {
            // Contiguous anonymous mappings from `start` must end exactly 64 MiB later.
            let mut end = first_end;
            for &(next_start, next_end) in &anonymous[i + 1..] {
                if end >= start + HEAP || next_start != end {
                    break;
                }
                end = next_end;
            }
            end == start + HEAP
        })
        .count()
}

/// Waits until `pid` listens on `port`; panics with `log` if it exits or takes too long.
pub fn wait_until_listening(child: &mut Child, port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if port_owned_by(child.id(), port) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening on {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{what} did not listen on port {port} within 20 s:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A Mosquitto broker of this test.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    listeners: Option<String>,
}

impl Mosquitto {
    /// Starts Mosquitto with persistence in a temporary directory, anonymous on one port.
    pub fn start() -> Mosquitto {
        Self::start_in(tempfile::tempdir().unwrap(), None)
    }

    /// Starts Mosquitto as [`Mosquitto::start`] does, logging at debug as well (PINGREQs, for
    /// one).
    pub fn start_logging_debug() -> Mosquitto {
        Self::start_with_listeners(tempfile::tempdir().unwrap(), |port| {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_type debug")
        })
    }

    /// Starts Mosquitto with its own listener section (`per_listener_settings true` style):
    /// `listeners(port)` returns the lines; `port` is the one checked for ownership.
    pub fn start_with_listeners(
        dir: tempfile::TempDir,
        listeners: impl Fn(u16) -> String,
    ) -> Mosquitto {
        let port = free_port();
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            listeners: Some(listeners(port)),
        };
        m.make_dir_readable();
        m.spawn();
        m
    }

    fn make_dir_readable(&self) {
        // Started as root, mosquitto drops to its own user: let it read and write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }

    fn start_in(dir: tempfile::TempDir, listeners: Option<String>) -> Mosquitto {
        let mut m = Mosquitto {
            child: None,
            port: free_port(),
            dir,
            listeners,
        };
        m.make_dir_readable();
        m.spawn();
        m
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn spawn(&mut self) {
        let bin = require("mosquitto", "mosquitto");
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "{listeners}\npersistence true\npersistence_location {dir}/\n\
                 autosave_interval 1\nmax_queued_messages 100000\nmax_inflight_messages 100\n\
                 log_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                listeners = self.listeners.clone().unwrap_or_else(|| format!("listener {} 127.0.0.1\nallow_anonymous true", self.port)),
                dir = self.dir.path().display(),
                log = self.log().display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until_listening(&mut child, self.port, "mosquitto", &self.log());
        self.child = Some(child);
    }

    /// Whether the broker wrote its persistence database after `t` (it saves every
    /// `autosave_interval`, in whole seconds, when something changed).
    pub fn saved_since(&self, t: std::time::SystemTime) -> bool {
        std::fs::metadata(self.dir.path().join("mosquitto.db"))
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > t)
    }

    /// SIGKILLs the broker (no clean shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same persistence directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a child's stdout line by line into a shared buffer (for demo output).
pub fn capture_lines(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A VictoriaMetrics single-node server of this test (Debian `victoria-metrics`), which accepts
/// the InfluxDB v2 write API. Started with deduplication so a point written twice counts once.
#[derive(Debug)]
pub struct VictoriaMetrics {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    /// Starts it in a temporary directory on a free port.
    pub fn start() -> VictoriaMetrics {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    /// Starts it with its data in memory (a directory in `/dev/shm`, or a temporary directory
    /// where there is none), for benchmarks of the gateway. VictoriaMetrics stands for the
    /// city's time-series server, which in the field has a disk of its own; here it would write
    /// and merge its parts on the disk whose fsync latency the gateway's commits measure.
    pub fn start_in_memory() -> VictoriaMetrics {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        Self::start_in(dir.unwrap())
    }

    fn start_in(dir: tempfile::TempDir) -> VictoriaMetrics {
        let mut vm = VictoriaMetrics {
            child: None,
            port: free_port(),
            dir,
        };
        vm.spawn();
        vm
    }

    fn spawn(&mut self) {
        let bin = require("victoria-metrics", "victoria-metrics");
        let log_path = self.dir.path().join("vm.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(bin)
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            .arg("-dedup.minScrapeInterval=1ms")
            .arg("-search.latencyOffset=0s")
            .arg("-retentionPeriod=100y")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until_listening(&mut child, self.port, "victoria-metrics", &log_path);
        self.child = Some(child);
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it with SIGTERM (it flushes what it acknowledged) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Prometheus Alertmanager of this test (Debian `prometheus-alertmanager`): clustering off,
/// one receiver that delivers nowhere, data in a temporary directory.
#[derive(Debug)]
pub struct Alertmanager {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts it on a free port.
    pub fn start() -> Alertmanager {
        Self::start_config(
            "route:\n  receiver: nowhere\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: nowhere\n",
        )
    }

    /// Starts one on a free port with this configuration (no cluster).
    pub fn start_config(config_text: &str) -> Alertmanager {
        Self::start_with(config_text, &["--cluster.listen-address=".to_owned()])
    }

    /// A cluster of two on loopback (gossiping on ports of their own), each notifying
    /// `webhook_url` of every group (`alertname`, `subject`, `severity`) and its resolution:
    /// what deduplicates the notifications of gateway replicas.
    pub fn start_pair(webhook_url: &str) -> (Alertmanager, Alertmanager) {
        let config = format!(
            "route:\n  receiver: hook\n  group_by: [alertname, subject, severity]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 4h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n"
        );
        let (one, two) = (free_port(), free_port());
        let member = |me: u16, peer: u16| {
            vec![
                format!("--cluster.listen-address=127.0.0.1:{me}"),
                format!("--cluster.advertise-address=127.0.0.1:{me}"),
                format!("--cluster.peer=127.0.0.1:{peer}"),
                // Quick on loopback: gossip every 100 ms; the second in line waits 2 s for the
                // first's notification log before notifying itself.
                "--cluster.gossip-interval=100ms".to_owned(),
                "--cluster.pushpull-interval=1s".to_owned(),
                "--cluster.peer-timeout=2s".to_owned(),
            ]
        };
        (
            Self::start_with(&config, &member(one, two)),
            Self::start_with(&config, &member(two, one)),
        )
    }

    fn start_with(config_text: &str, cluster: &[String]) -> Alertmanager {
        let bin = require("prometheus-alertmanager", "prometheus-alertmanager");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, config_text).unwrap();
        let port = free_port();
        let log_path = dir.path().join("alertmanager.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(cluster)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until_listening(&mut child, port, "prometheus-alertmanager", &log_path);
        Alertmanager {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
