//! The server under test when no `--url` is given: the real binary (`tollgate serve`) as a
//! child process, on a fresh data directory and a config file this module writes, exactly as an
//! operator would run it. The child is killed, and its directory removed, when the
//! [`LocalServer`] is dropped, and also if the bench process dies (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::machine::{ProcessSample, sample_process};

/// Recovery of a fresh data directory takes milliseconds; this only bounds a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const LOG_TAIL_BYTES: u64 = 4000;

pub struct ServerOptions<'a> {
    /// `fsync` or `wal`.
    pub durability: &'a str,
    /// 0 = one per core.
    pub partitions: u16,
    /// Parent of the fresh working directory (the system temp dir when `None`).
    pub data_root: Option<&'a Path>,
    pub token: &'a str,
    pub run_id: &'a str,
    /// Webhook destination (the bench's sink) and its secret.
    pub webhook: Option<(&'a str, &'a str)>,
    /// The port the server listens on (127.0.0.1); 0 = an ephemeral port.
    pub port: u16,
}

pub struct LocalServer {
    child: Child,
    pub base: String,
    workdir: PathBuf,
    config: ServerConfig,
}

/// What the config file says, but the durability (which a restart may change).
struct ServerConfig {
    token: String,
    data_dir: PathBuf,
    partitions: u16,
    webhook: Option<(String, String)>,
    port: u16,
}

/// A graceful stop writes a checkpoint of every customer; this bounds it.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

impl LocalServer {
    /// Writes the config and starts `<this executable> serve --config <file>`, then waits for the
    /// line `tollgate listening on http://IP:PORT`.
    ///
    /// # Errors
    /// A message (with the end of the server's log) when it cannot start.
    pub fn start(options: &ServerOptions) -> Result<LocalServer, String> {
        let root = options
            .data_root
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        let workdir = root.join(format!("tollgate-bench-{}", options.run_id));
        std::fs::create_dir_all(&workdir)
            .map_err(|e| format!("cannot create {}: {e}", workdir.display()))?;
        let config = ServerConfig {
            token: options.token.to_owned(),
            data_dir: workdir.join("data"),
            partitions: options.partitions,
            webhook: options
                .webhook
                .map(|(url, secret)| (url.to_owned(), secret.to_owned())),
            port: options.port,
        };
        let (child, base) = spawn(&workdir, &config.text(options.durability))?;
        Ok(LocalServer {
            child,
            base,
            workdir,
            config,
        })
    }

    /// Stops the server gracefully (SIGTERM: final checkpoint) and starts it again on the same
    /// data directory with `durability`; `base` changes unless the port is pinned (an ephemeral
    /// port is a fresh one; a pinned one is bound again: std sets `SO_REUSEADDR`).
    ///
    /// # Errors
    /// When it does not stop in time or does not start again.
    pub fn restart(&mut self, durability: &str) -> Result<(), String> {
        // SAFETY: kill only sends a signal to our own child, which has not been reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => return Err(format!("the server stopped with {status}")),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return Err("the server did not stop after SIGTERM".into()),
            }
        }
        let (child, base) = spawn(&self.workdir, &self.config.text(durability))?;
        self.child = child;
        self.base = base;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.workdir.join("data")
    }

    /// CPU time and memory of the server process now.
    pub fn sample(&self) -> Option<ProcessSample> {
        sample_process(&self.pid().to_string())
    }

    /// The last few KB of the server's stderr.
    pub fn log_tail(&self) -> String {
        log_tail(&self.workdir)
    }
}

/// Writes `config` and starts the server; returns it with its base URL.
fn spawn(workdir: &Path, config: &str) -> Result<(Child, String), String> {
    let config_path = workdir.join("tollgate.toml");
    std::fs::write(&config_path, config)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let log_path = workdir.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the tollgate executable: {e}"))?;
    let mut command = Command::new(exe);
    command
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec and only calls prctl, which is
        // async-signal-safe. The server then dies with the thread that started it (the
        // bench's main thread), so an interrupted bench leaves no server behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        let mut sent = false;
        // Keep draining stdout so the child never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            if let Some(rest) = line.strip_prefix("tollgate listening on ") {
                let _ = tx.send(rest.trim().to_owned());
                sent = true;
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(base) => Ok((child, base)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the server did not start; the end of its log:\n{}",
                log_tail(workdir)
            ))
        }
    }
}

fn log_tail(workdir: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(workdir.join("server.log")) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut tail = String::new();
    let _ = file.read_to_string(&mut tail);
    tail
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // The data is throwaway: no graceful stop (its final checkpoint would only cost time).
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

fn toml_string(text: &str) -> String {
    // serde_json's string escaping is valid TOML basic-string escaping.
    serde_json::Value::String(text.to_owned()).to_string()
}

impl ServerConfig {
    fn text(&self, durability: &str) -> String {
        let mut text = format!(
            "# Written by `tollgate bench` for one run.\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\
             [auth]\ntokens = [{token}]\n\
             [storage]\ndata_dir = {data}\ndurability = {durability}\n\
             [engine]\npartitions = {partitions}\n\
             [logging]\nlevel = \"warn\"\n",
            token = toml_string(&self.token),
            data = toml_string(&self.data_dir.to_string_lossy()),
            durability = toml_string(durability),
            partitions = self.partitions,
            port = self.port,
        );
        if let Some((url, secret)) = &self.webhook {
            text.push_str(&format!(
                "[[webhooks.destinations]]\nurl = {}\nsecret = {}\n",
                toml_string(url),
                toml_string(secret)
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_is_one_the_server_accepts() {
        let dir =
            std::env::temp_dir().join(format!("tollgate-bench-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = ServerConfig {
            token: "bench-token-\"quoted\"".into(),
            data_dir: dir.join("data"),
            partitions: 3,
            webhook: Some(("http://127.0.0.1:9/hooks".into(), "whsec_x".into())),
            port: 0,
        };
        let path = dir.join("t.toml");
        std::fs::write(&path, config.text("wal")).unwrap();
        let config = crate::config::Config::load(Some(&path)).unwrap();
        assert_eq!(config.storage.durability, crate::storage::Durability::Wal);
        assert_eq!(config.engine.partitions, 3);
        assert_eq!(
            config.auth.tokens,
            crate::http::full_access(&["bench-token-\"quoted\"".to_owned()])
        );
        assert_eq!(config.webhooks.destinations.len(), 1);
        assert_eq!(config.storage.data_dir, dir.join("data"));
        assert_eq!(
            config.listen_addr().unwrap().port(),
            0,
            "an ephemeral port by default"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pinned_server_port_is_the_listen_address_of_the_written_config() {
        let dir = std::env::temp_dir().join(format!("tollgate-bench-port-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = ServerConfig {
            token: "bench-token".into(),
            data_dir: dir.join("data"),
            partitions: 1,
            webhook: None,
            port: 18_123,
        };
        let path = dir.join("t.toml");
        std::fs::write(&path, config.text("fsync")).unwrap();
        let config = crate::config::Config::load(Some(&path)).unwrap();
        assert_eq!(config.listen_addr().unwrap().to_string(), "127.0.0.1:18123");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
