//! The server side of the server-path workloads: a real `factum serve
//! --insecure` process on the embedded engine (a fresh store, a free local
//! port), the CPU time it spends, and where the two processes run. The
//! `secure-…` workloads start it with `--dev` instead ([`Security::Dev`]):
//! TLS with the development CA it makes in the store's directory, users,
//! and clients that send `admin:changeit` with every call.
//!
//! The server runs in its own process, as users run it, so that its CPU
//! time can be read apart from the load generator's: user + system time of
//! the whole process (every thread, living or exited) from
//! `/proc/<pid>/stat`, sampled right before and right after the measured
//! window. On a machine with two or more CPUs the server is pinned to one
//! (`taskset`) and this process — the load generator and the engine
//! baseline, on a runtime of one worker made for that CPU — to another, so
//! neither takes the other's core; elsewhere the report says that it could
//! not pin.
//!
//! The `factum` binary is `FACTUM_BIN` when set, else the `factum` beside
//! this executable (cargo builds both into the same directory).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::util::Latencies;

/// Where the `factum` binary is.
pub fn factum_binary() -> Result<PathBuf, BenchError> {
    if let Some(bin) = std::env::var_os("FACTUM_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(BenchError::failure(format!(
                "FACTUM_BIN={} is not a file",
                bin.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::failure(format!("cannot find the factum-bench binary: {e}")))?;
    let bin = exe.with_file_name("factum");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(BenchError::failure(format!(
            "the server-path workloads run `factum serve`, and {} does not exist (build it with `cargo build --release -p factum-cli`, or set FACTUM_BIN)",
            bin.display()
        )))
    }
}

/// CPUs of a list such as `0-3,6` (the kernel's format).
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    cpus
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Option<(String, Vec<usize>)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim()
        .to_owned();
    let cpus = parse_cpu_list(&list);
    Some((list, cpus))
}

/// Sets the CPUs of every thread of this process.
fn pin_self(cpus: &str) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", cpus])
        .arg(std::process::id().to_string())
        .output()
        .map_err(|e| format!("cannot run taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where the server and this process run during one workload. Pinning
/// lasts until it is dropped, which gives this process its CPUs back.
pub enum Placement {
    /// The server on `server_cpu`, every thread of this process on `load_cpu`.
    Pinned {
        /// The server's CPU.
        server_cpu: usize,
        /// This process's CPU (load generator and engine baseline).
        load_cpu: usize,
        /// This process's CPU list before pinning.
        restore: String,
        /// The runtime of the load generator and the engine baseline: one
        /// worker, as tokio sizes a runtime for a process on one CPU. The
        /// bench's own runtime, made before pinning, has a worker per CPU
        /// of the machine; squeezed onto one CPU, its workers woke each
        /// other for every burst of answers (a futex and a context switch
        /// each): three context switches per append through KurrentDB's
        /// official client, whose throughput they decided.
        runtime: tokio::runtime::Runtime,
    },
    /// Both share every CPU; why.
    Shared(String),
}

impl Placement {
    /// Pins this process to its second allowed CPU (the server gets the
    /// first) when there are two and `taskset` works.
    pub fn pin() -> Placement {
        let Some((restore, cpus)) = allowed_cpus() else {
            return Placement::Shared("not pinned: /proc/self/status has no CPU list".into());
        };
        if cpus.len() < 2 {
            return Placement::Shared(format!(
                "not pinned: this process may run on {} CPU(s) ({restore})",
                cpus.len()
            ));
        }
        let (server_cpu, load_cpu) = (cpus[0], cpus[1]);
        if let Err(why) = pin_self(&load_cpu.to_string()) {
            return Placement::Shared(format!("not pinned: {why}"));
        }
        // Made after pinning: its threads start on the load CPU.
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(runtime) => Placement::Pinned {
                server_cpu,
                load_cpu,
                restore,
                runtime,
            },
            Err(e) => {
                let _ = pin_self(&restore);
                Placement::Shared(format!(
                    "not pinned: cannot start a runtime for the load CPU: {e}"
                ))
            }
        }
    }

    /// The runtime the load generator and the engine baseline run on: the
    /// load CPU's own when pinned, else `shared` (the bench's).
    pub fn runtime<'a>(
        &'a self,
        shared: &'a tokio::runtime::Runtime,
    ) -> &'a tokio::runtime::Runtime {
        match self {
            Placement::Pinned { runtime, .. } => runtime,
            Placement::Shared(_) => shared,
        }
    }

    /// The load generator's CPU, when pinned.
    pub(crate) fn load_cpu(&self) -> Option<usize> {
        match self {
            Placement::Pinned { load_cpu, .. } => Some(*load_cpu),
            Placement::Shared(_) => None,
        }
    }

    /// The server's CPU, when pinned.
    pub(crate) fn server_cpu(&self) -> Option<usize> {
        match self {
            Placement::Pinned { server_cpu, .. } => Some(*server_cpu),
            Placement::Shared(_) => None,
        }
    }

    /// One line for the report.
    pub fn note(&self) -> String {
        match self {
            Placement::Pinned {
                server_cpu,
                load_cpu,
                ..
            } => format!(
                "pinned (taskset): the server on CPU {server_cpu}; the load generator and the engine baseline on CPU {load_cpu}, on a runtime of one worker"
            ),
            Placement::Shared(why) => {
                format!("{why}: server, load generator and engine baseline share the CPUs")
            }
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Placement::Pinned { restore, .. } = self {
            if let Err(why) = pin_self(restore) {
                eprintln!("warning: cannot give this process its CPUs ({restore}) back: {why}");
            }
        }
    }
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
pub struct CpuClock {
    stat: PathBuf,
    /// Clock ticks per second (`getconf CLK_TCK`).
    hz: u64,
}

impl CpuClock {
    /// The clock of process `pid`.
    pub fn of(pid: u32) -> Result<CpuClock, BenchError> {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .map_err(|e| BenchError::failure(format!("cannot run getconf CLK_TCK: {e}")))?;
        let hz: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|hz| *hz > 0)
            .ok_or_else(|| BenchError::failure("getconf CLK_TCK did not print a number"))?;
        Ok(CpuClock {
            stat: PathBuf::from(format!("/proc/{pid}/stat")),
            hz,
        })
    }

    /// The process's CPU time so far (granularity: one clock tick).
    pub fn now(&self) -> Result<Duration, BenchError> {
        let stat = std::fs::read_to_string(&self.stat)
            .map_err(|e| BenchError::failure(format!("reading {}: {e}", self.stat.display())))?;
        cpu_ticks(&stat)
            .map(|ticks| Duration::from_secs_f64(ticks as f64 / self.hz as f64))
            .ok_or_else(|| {
                BenchError::failure(format!("{} is not as expected", self.stat.display()))
            })
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// How the server protects its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// `--insecure`: plain TCP, no users.
    Insecure,
    /// `--dev`: TLS with a development CA made in the data directory,
    /// users (`admin` / `changeit`), credentials required.
    Dev,
}

/// A running `factum serve` on a store of its own.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The development CA clients trust ([`Security::Dev`]).
    pub ca: Option<PathBuf>,
    /// Its CPU time.
    pub cpu: CpuClock,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the server on the store in `data` (created when missing),
    /// on a free port, on the placement's server CPU; its stderr goes to
    /// `<data>.log`.
    pub fn start(data: &Path, placement: &Placement) -> Result<ServerProcess, BenchError> {
        Self::start_with(data, placement, &[])
    }

    /// [`ServerProcess::start`] with more `factum serve` arguments.
    pub fn start_with(
        data: &Path,
        placement: &Placement,
        args: &[&str],
    ) -> Result<ServerProcess, BenchError> {
        Self::start_as(data, placement, Security::Insecure, args)
    }

    /// [`ServerProcess::start_with`], protected as `security` says.
    pub fn start_as(
        data: &Path,
        placement: &Placement,
        security: Security,
        args: &[&str],
    ) -> Result<ServerProcess, BenchError> {
        let factum = factum_binary()?;
        let log = data.with_extension("log");
        let stderr = std::fs::File::create(&log)
            .map_err(|e| BenchError::failure(format!("creating {}: {e}", log.display())))?;
        let mut command = match placement.server_cpu() {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["--cpu-list", &cpu.to_string()]).arg(&factum);
                c
            }
            None => Command::new(&factum),
        };
        command
            .arg("serve")
            .arg(match security {
                Security::Insecure => "--insecure",
                Security::Dev => "--dev",
            })
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env_remove("FACTUM_CONFIG")
            .env_remove("FACTUM_DEFAULT_ADMIN_PASSWORD")
            .env_remove("FACTUM_BACKEND")
            .env_remove("FACTUM_MAX_APPEND_BYTES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().map_err(|e| {
            BenchError::failure(format!("cannot start {} serve: {e}", factum.display()))
        })?;
        // --dev prints where its CA is first; then, in either mode,
        // "factum serving <store> on <addr> (gRPC and HTTP; …)".
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let mut ca = None;
        let read = loop {
            line.clear();
            match stdout.read_line(&mut line) {
                Ok(0) => break Err(()),
                Ok(_) if line.starts_with("factum serving") => break Ok(()),
                Ok(_) => {
                    if let Some(path) = line.trim().strip_prefix("development CA: ") {
                        ca = Some(PathBuf::from(path));
                    }
                }
                Err(_) => break Err(()),
            }
        };
        let addr = line
            .rsplit_once(" on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let wanted_ca = security == Security::Insecure || ca.is_some();
        let Some(addr) = addr.filter(|_| read.is_ok() && wanted_ca) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::failure(format!(
                "factum serve did not say where it listens ({line:?}): {}",
                tail(&log)
            )));
        };
        let cpu = CpuClock::of(child.id())?;
        Ok(ServerProcess {
            child,
            addr,
            ca,
            cpu,
            log,
        })
    }

    /// The connection string of a client: plain `http://…`, or TLS with
    /// the development CA and `admin`'s credentials.
    pub fn connection_string(&self) -> String {
        match &self.ca {
            None => format!("http://{}", self.addr),
            Some(ca) => format!(
                "esdb://admin:changeit@localhost:{}?tls=true&tlsCAFile={}",
                self.addr.port(),
                ca.display()
            ),
        }
    }

    /// Its resident memory now (`VmRSS` of `/proc/<pid>/status`), bytes.
    pub fn rss(&self) -> Result<u64, BenchError> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path)
            .map_err(|e| BenchError::failure(format!("reading {path}: {e}")))?;
        status_kib(&status, "VmRSS:")
            .map(|kib| kib * 1024)
            .ok_or_else(|| BenchError::failure(format!("no VmRSS in {path}")))
    }

    /// SIGTERM, and waits for a clean exit (the store closed).
    pub fn stop(mut self) -> Result<(), BenchError> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    let _ = std::fs::remove_file(&self.log);
                    return Ok(());
                }
                Ok(Some(status)) => {
                    return Err(BenchError::failure(format!(
                        "factum serve ended with {status}: {}",
                        tail(&self.log)
                    )))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(BenchError::failure(
                        "factum serve did not stop within 30 s of SIGTERM",
                    ));
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Still running only when a workload failed half way.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `<field> <n> kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The last lines of a log, on one line.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let last = lines[lines.len().saturating_sub(5)..].join(" | ");
    if last.is_empty() {
        "(nothing on its stderr)".into()
    } else {
        last
    }
}

/// Bytes per echo round trip: about one append or one delivered event.
const ECHO_BYTES: usize = 300;

/// The hidden `factum-bench echo`: prints the port it listens on, then
/// echoes one connection's messages of [`ECHO_BYTES`] until it closes.
pub fn echo() -> Result<(), BenchError> {
    use std::io::{Read, Write};
    let fail = |e: std::io::Error| BenchError::failure(format!("echo: {e}"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    println!("{}", listener.local_addr().map_err(fail)?.port());
    std::io::stdout().flush().map_err(fail)?;
    let (mut tcp, _) = listener.accept().map_err(fail)?;
    tcp.set_nodelay(true).map_err(fail)?;
    let mut buf = [0u8; ECHO_BYTES];
    while tcp.read_exact(&mut buf).is_ok() {
        tcp.write_all(&buf).map_err(fail)?;
    }
    Ok(())
}

/// `n` loopback TCP round trips of [`ECHO_BYTES`], one at a time, between
/// this process and an echo process on `cpu`: what crossing between the two
/// costs before any server work (on a VM whose idle CPUs halt, waking one
/// is most of it).
pub fn echo_round_trips(cpu: usize, n: usize) -> Result<Latencies, BenchError> {
    use std::io::{Read, Write};
    let fail = |e: std::io::Error| BenchError::failure(format!("echo round trips: {e}"));
    let exe = std::env::current_exe().map_err(fail)?;
    let mut child = Command::new("taskset")
        .args(["--cpu-list", &cpu.to_string()])
        .arg(exe)
        .arg("echo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let mut port = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut port)
        .map_err(fail)?;
    let result = (|| {
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| BenchError::failure(format!("echo printed {port:?}, not a port")))?;
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(fail)?;
        tcp.set_nodelay(true).map_err(fail)?;
        let mut buf = [7u8; ECHO_BYTES];
        let mut lat = Latencies::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            tcp.write_all(&buf).map_err(fail)?;
            tcp.read_exact(&mut buf).map_err(fail)?;
            lat.push(t.elapsed());
        }
        Ok(lat)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_from_proc_status() {
        let status = "Name:\tfactum\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn cpu_lists_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-1"), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7\n"), vec![0, 2, 3, 4, 7]);
        assert_eq!(parse_cpu_list("3"), vec![3]);
    }

    #[test]
    fn stat_fields_after_a_command_name_with_spaces_and_parentheses() {
        let stat =
            "1234 (tokio (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 99 0 0";
        assert_eq!(cpu_ticks(stat), Some(325));
    }

    #[test]
    fn this_process_spends_cpu_time() {
        // Spin until the clock shows 30 ms spent; a clock that does not
        // move fails after 10 s of wall time.
        let clock = CpuClock::of(std::process::id()).unwrap();
        let before = clock.now().unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        while clock.now().unwrap() - before < Duration::from_millis(30) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no CPU time counted"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }
}
