//! Talking to a `switchyard` API server from benchmarks: processes, HTTPS/1.1 connections with
//! the admin token, and parallel create loops.

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` with its output discarded.
    pub fn start(cmd: &mut std::process::Command, what: &str) -> Result<Proc> {
        Self::start_logging(cmd, what, None)
    }

    /// Starts `cmd` with its output (stdout and stderr) written to `log`, or discarded.
    pub fn start_logging(
        cmd: &mut std::process::Command,
        what: &str,
        log: Option<&Path>,
    ) -> Result<Proc> {
        use std::process::Stdio;
        let (out, err) = match log {
            Some(path) => {
                let file = std::fs::File::create(path)?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| anyhow!("starting {what}: {e}"))?;
        Ok(Proc(child))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: a master process (nginx, HAProxy) takes its workers down with it, where
        // SIGKILL would leave them running. Then SIGKILL whatever is still there after a second.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One keep-alive HTTPS/1.1 connection to the API server with the admin token.
pub struct Conn {
    pub tx: SendRequest<Full<Bytes>>,
    pub token: Arc<String>,
}

#[derive(Clone)]
pub struct Target {
    pub port: u16,
    pub tls: TlsConnector,
    pub token: Arc<String>,
}

impl Target {
    pub async fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let tls = self.tls.connect(name, tcp).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            tx,
            token: self.token.clone(),
        })
    }
}

impl Conn {
    pub async fn request(&mut self, method: &str, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.request_as(method, path, "application/json", body)
            .await
    }

    pub async fn request_as(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes)> {
        self.tx.ready().await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .body(Full::new(body))?;
        let resp = self.tx.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A JSON merge patch that must succeed.
    pub async fn merge_patch(&mut self, path: &str, body: String) -> Result<()> {
        let (status, resp) = self
            .request_as(
                "PATCH",
                path,
                "application/merge-patch+json",
                Bytes::from(body),
            )
            .await?;
        if status != 200 {
            bail!("patch {path}: {status} {}", String::from_utf8_lossy(&resp));
        }
        Ok(())
    }

    pub async fn create(&mut self, path: &str, body: String) -> Result<()> {
        let (status, resp) = self.request("POST", path, Bytes::from(body)).await?;
        if status != 201 {
            bail!("create {path}: {status} {}", String::from_utf8_lossy(&resp));
        }
        Ok(())
    }
}

/// Opens `n` watch streams on `path` (each on its own connection) and hands every event line to
/// `on_event`.
pub async fn spawn_watchers(
    target: &Target,
    n: usize,
    path: &str,
    on_event: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut watchers = Vec::new();
    for _ in 0..n {
        let mut conn = target.connect().await?;
        conn.tx.ready().await?;
        let req = http::Request::builder()
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {}", conn.token))
            .body(Full::new(Bytes::new()))?;
        let resp = conn.tx.send_request(req).await?;
        let on_event = on_event.clone();
        watchers.push(tokio::spawn(async move {
            let _keep = conn;
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    on_event(&String::from_utf8_lossy(&line));
                }
            }
        }));
    }
    Ok(watchers)
}

/// Runs `total` operations over `clients` concurrent workers; returns ops/s.
pub async fn run_parallel<F, Fut>(clients: usize, total: usize, make: F) -> Result<f64>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<
            Output = Result<
                Box<dyn FnMut(usize) -> futures::future::BoxFuture<'static, Result<()>> + Send>,
            >,
        > + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (next, make) = (next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut op = make(c).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                op(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Creates `total` objects (`body(i)`) at `path` over `clients` connections; returns creates/s.
pub async fn api_creates(
    target: &Target,
    clients: usize,
    total: usize,
    path: &str,
    body: impl Fn(usize) -> String + Clone + Send + Sync + 'static,
) -> Result<f64> {
    let target = target.clone();
    let path: Arc<str> = path.into();
    run_parallel(clients, total, move |_| {
        let (target, body, path) = (target.clone(), body.clone(), path.clone());
        async move {
            let conn = Arc::new(tokio::sync::Mutex::new(target.connect().await?));
            let op: Box<
                dyn FnMut(usize) -> futures::future::BoxFuture<'static, Result<()>> + Send,
            > = Box::new(move |i| {
                let (conn, object, path) = (conn.clone(), body(i), path.clone());
                Box::pin(async move { conn.lock().await.create(&path, object).await })
            });
            Ok(op)
        }
    })
    .await
}

pub fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS"))?;
    Ok(kb / 1024.0)
}

/// CPU seconds (user + system) a process has used so far; `None` for this process.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let (_, user, system) = stat_cpu(&std::fs::read_to_string(path)?)?;
    Ok(user + system)
}

/// The parent pid, user and system CPU seconds in the text of a `/proc/PID/stat`.
fn stat_cpu(stat: &str) -> Result<(u32, f64, f64)> {
    // Fields after the command name (which may hold spaces): the parent is the 4th, utime the
    // 14th, stime the 15th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.len() < 13 {
        bail!("bad stat");
    }
    Ok((
        f[1].parse()?,
        f[11].parse::<f64>()? / 100.0,
        f[12].parse::<f64>()? / 100.0,
    ))
}

/// The pids of a process's children, with the text of their `/proc/PID/stat`.
fn children(pid: u32) -> Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if matches!(stat_cpu(&text), Ok((parent, _, _)) if parent == pid) {
            out.push((child, text));
        }
    }
    Ok(out)
}

/// User and system CPU seconds of a process and its children (an nginx master and its workers).
pub fn tree_cpu(pid: u32) -> Result<(f64, f64)> {
    let (_, mut user, mut system) =
        stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
    for (_, text) in children(pid)? {
        let (_, u, s) = stat_cpu(&text)?;
        user += u;
        system += s;
    }
    Ok((user, system))
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins every thread of a process and of its children to `cpus`; threads and processes they
/// start later inherit it.
pub fn pin_tree(pid: u32, cpus: &[usize]) -> Result<()> {
    // SAFETY: as in `allowed_cpus`; CPU_SET only writes inside the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut pids = vec![pid];
    pids.extend(children(pid)?.into_iter().map(|(p, _)| p));
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks {
            let Some(tid) = task?
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: sched_setaffinity reads the set; a thread that exited gives ESRCH.
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if unsafe { libc::sched_setaffinity(tid, size, &set) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    bail!("pinning thread {tid} of {p} to CPUs {cpus:?}: {e}");
                }
            }
        }
    }
    Ok(())
}

/// A `switchyard up` on loopback with its own data directory: the process, its API server, and
/// where its metrics are served.
pub struct Up {
    pub process: Proc,
    pub target: Target,
    pub metrics: u16,
}

impl Up {
    /// Starts `switchyard up` with `extra` flags (and `env`), and waits until its API serves.
    pub async fn start(
        binary: &Path,
        data: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Up> {
        Self::start_logging(binary, data, env, extra, None).await
    }

    /// [`Up::start`] with the process's output written to `log`.
    pub async fn start_logging(
        binary: &Path,
        data: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
        log: Option<&Path>,
    ) -> Result<Up> {
        let (api, metrics) = (free_port(), free_port());
        let mut cmd = std::process::Command::new(binary);
        cmd.envs(env.iter().copied())
            .args(["up", "--data-dir"])
            .arg(data);
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--node-name",
            "bench",
        ]);
        cmd.args(extra);
        let process = Proc::start_logging(&mut cmd, "switchyard up", log)?;
        wait_for_port(api, "switchyard up")?;
        wait_for_port(metrics, "switchyard up metrics")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Up {
            process,
            target: Target::from_data_dir(api, data)?,
            metrics,
        })
    }
}

/// Starts `switchyard server` on a free loopback port with its data in `data`, and waits until
/// it serves; returns the process and a target with the admin token.
pub async fn start_server(binary: &Path, data: &Path) -> Result<(Proc, Target)> {
    start_server_with(binary, data, &[]).await
}

/// [`start_server`] with `extra` flags.
pub async fn start_server_with(
    binary: &Path,
    data: &Path,
    extra: &[&str],
) -> Result<(Proc, Target)> {
    let port = free_port();
    let server = Proc::start(
        std::process::Command::new(binary)
            .arg("server")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra),
        "switchyard server",
    )?;
    wait_for_port(port, "switchyard")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((server, Target::from_data_dir(port, data)?))
}

/// Waits until something listens on `port` of 127.0.0.1.
pub fn wait_for_port(port: u16, what: &str) -> Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not start listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl Target {
    /// The server on `port` whose CA and admin token are in `data_dir`.
    pub fn from_data_dir(port: u16, data_dir: &Path) -> Result<Target> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let token = Arc::new(
            std::fs::read_to_string(data_dir.join("admin-token"))?
                .trim()
                .to_string(),
        );
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut std::fs::read(data_dir.join("ca.crt"))?.as_slice()) {
            roots.add(cert?)?;
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Target {
            port,
            tls: TlsConnector::from(Arc::new(tls)),
            token,
        })
    }
}
