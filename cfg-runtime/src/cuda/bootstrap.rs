//! Bootstrapping a multi-process NCCL run: torchrun's environment variables
//! and the TCP exchange of the 128-byte NCCL unique id.
//!
//! Rank 0 creates the id and serves it on `CFG_NCCL_PORT` when set, else on
//! `MASTER_PORT + 1` under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`: the
//! agent's own store holds `MASTER_PORT`), else on `MASTER_PORT`; every other
//! rank connects to `MASTER_ADDR`, retrying until
//! rank 0 listens, and receives it. Nothing here touches CUDA, so the
//! exchange is tested on any machine. Every wait has a deadline.
//!
//! Wire format (all integers little-endian):
//! - client → rank 0: `CFGNCCL1`, rank (u32), world size (u32);
//! - rank 0 → client: `CFGNCCL1`, then `0` and the 128-byte id, or `1`, a
//!   u16 length and a UTF-8 reason (the client's rank or world size is wrong).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Bytes in an NCCL unique id.
pub const ID_BYTES: usize = 128;

const MAGIC: &[u8; 8] = b"CFGNCCL1";

/// Why bootstrapping failed.
#[derive(Debug, Error)]
pub enum BootstrapError {
    /// A required environment variable is not set.
    #[error("environment variable {name} is not set (a multi-process run needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, as torchrun sets them)")]
    MissingVar {
        /// The variable.
        name: &'static str,
    },
    /// An environment variable does not hold a valid value.
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    InvalidVar {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Rank 0 could not listen for the other ranks.
    #[error("rank 0 cannot listen on {addr}: {source}{}", listen_hint(.source))]
    Listen {
        /// The address.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// A wait passed its deadline.
    #[error("{what} timed out after {seconds:.1} s{detail}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The timeout.
        seconds: f64,
        /// More about the last state (": ..." or empty).
        detail: String,
    },
    /// Rank 0 and a client disagree about the run (rank out of range, world size).
    #[error("rank 0 rejected rank {rank}: {reason}")]
    Rejected {
        /// The client's rank.
        rank: usize,
        /// Why.
        reason: String,
    },
    /// A socket call failed outside the retried steps.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The socket error.
        source: io::Error,
    },
}

fn listen_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::AddrInUse {
        " (the port is taken, e.g. by torchrun's own store: set CFG_NCCL_PORT to a free port on every rank)"
    } else {
        ""
    }
}

/// The variables of one process of a multi-process run (torchrun's convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapEnv {
    /// `RANK`: this process's rank, `0..world_size`.
    pub rank: usize,
    /// `WORLD_SIZE`: the number of processes, at least 1.
    pub world_size: usize,
    /// `LOCAL_RANK`: the CUDA device ordinal of this process (defaults to `RANK`).
    pub local_rank: usize,
    /// `MASTER_ADDR`: the host of rank 0.
    pub master_addr: String,
    /// The port rank 0 serves the id on: `CFG_NCCL_PORT` if set, else
    /// `MASTER_PORT + 1` under torchrun's agent store, else `MASTER_PORT`.
    pub port: u16,
}

impl BootstrapEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<BootstrapEnv, BootstrapError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the variables through `get` (tests pass a map instead of the
    /// process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<BootstrapEnv, BootstrapError> {
        let required = |name: &'static str| get(name).ok_or(BootstrapError::MissingVar { name });
        let world_size = parse_count("WORLD_SIZE", &required("WORLD_SIZE")?)?;
        if world_size == 0 {
            return Err(invalid("WORLD_SIZE", "0", "must be at least 1"));
        }
        let rank_text = required("RANK")?;
        let rank = parse_count("RANK", &rank_text)?;
        if rank >= world_size {
            return Err(invalid("RANK", &rank_text, &format!("must be below WORLD_SIZE={world_size}")));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => parse_count("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = required("MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            return Err(invalid("MASTER_ADDR", &master_addr, "is empty"));
        }
        let port = match get("CFG_NCCL_PORT") {
            Some(v) => parse_port("CFG_NCCL_PORT", &v)?,
            None => {
                let text = required("MASTER_PORT")?;
                let master = parse_port("MASTER_PORT", &text)?;
                // torchrun's agent already serves its own store on MASTER_PORT.
                if get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
                    master.checked_add(1).ok_or_else(|| {
                        invalid("MASTER_PORT", &text, "leaves no port above it for the NCCL id under torchrun")
                    })?
                } else {
                    master
                }
            }
        };
        Ok(BootstrapEnv { rank, world_size, local_rank, master_addr: master_addr.trim().to_string(), port })
    }
}

fn invalid(name: &'static str, value: &str, reason: &str) -> BootstrapError {
    BootstrapError::InvalidVar { name, value: value.to_string(), reason: reason.to_string() }
}

fn parse_count(name: &'static str, value: &str) -> Result<usize, BootstrapError> {
    value.trim().parse().map_err(|_| invalid(name, value, "expected a non-negative integer"))
}

fn parse_port(name: &'static str, value: &str) -> Result<u16, BootstrapError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(name, value, "expected a port number in 1..=65535")),
    }
}

/// Rank 0's side of the exchange: a listening socket.
#[derive(Debug)]
pub struct IdServer {
    listener: TcpListener,
}

impl IdServer {
    /// Listens on `addr` (`0.0.0.0:PORT` for a run; `127.0.0.1:0` picks a free
    /// port for tests).
    pub fn bind(addr: &str) -> Result<IdServer, BootstrapError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| BootstrapError::Listen { addr: addr.to_string(), source })?;
        // Non-blocking accepts let the serve loop watch its deadline.
        listener
            .set_nonblocking(true)
            .map_err(|source| BootstrapError::Io { what: "making the listener non-blocking".into(), source })?;
        Ok(IdServer { listener })
    }

    /// The address actually bound (its port, when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, BootstrapError> {
        self.listener
            .local_addr()
            .map_err(|source| BootstrapError::Io { what: "reading the listening address".into(), source })
    }

    /// Sends `id` to every rank `1..world_size`, returning once each has
    /// received it, or an error at `timeout` naming the ranks still missing.
    ///
    /// A connection that is not a client of this protocol (or breaks off) is
    /// dropped; a client asking twice (it retried after a broken reply) is
    /// served twice. A client with a wrong world size or rank is told why and
    /// the run fails: it belongs to a different launch.
    pub fn serve(&self, world_size: usize, id: &[u8; ID_BYTES], timeout: Duration) -> Result<(), BootstrapError> {
        let deadline = Instant::now() + timeout;
        let mut served = vec![false; world_size];
        served[0] = true;
        while served.iter().any(|s| !s) {
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = (0..world_size).filter(|&r| !served[r]).collect();
                return Err(BootstrapError::Timeout {
                    what: "rank 0 waiting for the other ranks to fetch the NCCL id".into(),
                    seconds: timeout.as_secs_f64(),
                    detail: format!(": ranks {missing:?} never connected"),
                });
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Give one client at most a few seconds, so a stray
                    // connection cannot stall the others.
                    let limit = (deadline - now).min(Duration::from_secs(5));
                    if let Some(rank) = serve_one(stream, world_size, id, limit)? {
                        served[rank] = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => return Err(BootstrapError::Io { what: "accepting a connection".into(), source }),
            }
        }
        Ok(())
    }
}

/// Answers one connection: `Ok(Some(rank))` once served, `Ok(None)` when the
/// connection was not usable, an error when the client belongs to another run.
fn serve_one(
    mut stream: TcpStream,
    world_size: usize,
    id: &[u8; ID_BYTES],
    limit: Duration,
) -> Result<Option<usize>, BootstrapError> {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(limit)))
        .and_then(|_| stream.set_write_timeout(Some(limit)));
    let mut hello = [0u8; 16];
    if setup.is_err() || stream.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
        return Ok(None);
    }
    let rank = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
    let their_world = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
    let problem = if their_world != world_size {
        Some(format!("it has WORLD_SIZE={their_world}, rank 0 has WORLD_SIZE={world_size}"))
    } else if rank == 0 || rank >= world_size {
        Some(format!("rank {rank} is not a client rank in 1..{world_size}"))
    } else {
        None
    };
    let mut reply = MAGIC.to_vec();
    match &problem {
        None => {
            reply.push(0);
            reply.extend_from_slice(id);
        }
        Some(reason) => {
            let text = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
            reply.push(1);
            reply.extend_from_slice(&(text.len() as u16).to_le_bytes());
            reply.extend_from_slice(text);
        }
    }
    let sent = stream.write_all(&reply).and_then(|_| stream.flush()).is_ok();
    match problem {
        Some(reason) => Err(BootstrapError::Rejected { rank, reason }),
        None if sent => Ok(Some(rank)),
        None => Ok(None),
    }
}

/// A client rank's side: connects to `host:port` (retrying until rank 0
/// listens) and returns the id, or an error at `timeout`.
pub fn fetch_id(
    host: &str,
    port: u16,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<[u8; ID_BYTES], BootstrapError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    let mut last = String::from("no attempt finished");
    loop {
        match (host, port).to_socket_addrs() {
            Ok(addrs) => {
                for addr in addrs {
                    match try_fetch(addr, rank, world_size, deadline) {
                        Ok(id) => return Ok(id),
                        Err(Attempt::Rejected(reason)) => return Err(BootstrapError::Rejected { rank, reason }),
                        Err(Attempt::Failed(e)) => last = format!("{addr}: {e}"),
                    }
                }
            }
            // The name may not resolve yet while the cluster starts up.
            Err(e) => last = format!("resolving {host}: {e}"),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(BootstrapError::Timeout {
                what: format!("rank {rank} fetching the NCCL id from {host}:{port}"),
                seconds: timeout.as_secs_f64(),
                detail: format!(": last attempt: {last}"),
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

enum Attempt {
    Rejected(String),
    Failed(io::Error),
}

impl From<io::Error> for Attempt {
    fn from(e: io::Error) -> Attempt {
        Attempt::Failed(e)
    }
}

fn try_fetch(addr: SocketAddr, rank: usize, world_size: usize, deadline: Instant) -> Result<[u8; ID_BYTES], Attempt> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Attempt::Failed(io::ErrorKind::TimedOut.into()));
    }
    let mut stream = TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2)))?;
    // Rank 0 answers at once when it is serving; allow for a busy host.
    let limit = left.min(Duration::from_secs(10)).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world_size as u32).to_le_bytes());
    stream.write_all(&hello)?;
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(Attempt::Failed(io::Error::new(io::ErrorKind::InvalidData, "not an NCCL id server")));
    }
    if head[8] == 0 {
        let mut id = [0u8; ID_BYTES];
        stream.read_exact(&mut id)?;
        return Ok(id);
    }
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut text = vec![0u8; u16::from_le_bytes(len) as usize];
    stream.read_exact(&mut text)?;
    Err(Attempt::Rejected(String::from_utf8_lossy(&text).into_owned()))
}
