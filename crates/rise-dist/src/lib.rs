//! Data-parallel collectives for rise over libtorch's own c10d.
//!
//! tch does not bind `torch.distributed`, but the libtorch it links ships it: `TCPStore`,
//! `ProcessGroupGloo` (CPU tensors) and `ProcessGroupNCCL` (CUDA tensors). `csrc/rise_dist.cpp`
//! is a small C ABI over them, compiled against the same headers (see `build.rs`); this crate
//! wraps it. No collective or transport is implemented here.
//!
//! A group is formed by [`ProcessGroup::init`] from a [`Rendezvous`]: rank 0 serves a
//! `TCPStore` at the master address, every rank connects, and the backend's own rendezvous
//! runs over that store. Every call blocks until the collective is done (Gloo) or enqueued on
//! the current CUDA stream (NCCL); a peer that dies makes the others' calls fail (Gloo: a
//! connection error; both: the timeout) rather than hang forever.
use std::ffi::{c_char, c_int, CStr, CString};
use std::time::Duration;

use tch::Tensor;
use torch_sys::C_tensor;

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

extern "C" {
    fn rise_dist_has_nccl() -> c_int;
    fn rise_dist_init(
        addr: *const c_char,
        port: u16,
        rank: c_int,
        world: c_int,
        backend: c_int,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut RawGroup;
    fn rise_dist_free(pg: *mut RawGroup);
    fn rise_dist_free_err(err: *mut c_char);
    fn rise_dist_all_reduce_sum(
        pg: *mut RawGroup,
        t: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rise_dist_reduce_scatter_sum(
        pg: *mut RawGroup,
        out: *mut C_tensor,
        input: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rise_dist_all_gather(
        pg: *mut RawGroup,
        out: *mut C_tensor,
        input: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rise_dist_broadcast(
        pg: *mut RawGroup,
        t: *mut C_tensor,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rise_dist_barrier(pg: *mut RawGroup, err: *mut *mut c_char) -> c_int;
}

/// Failures of the distributed layer.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The rendezvous description is invalid (from the caller or the environment).
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    /// A tensor cannot take part in a collective as given.
    #[error("{op}: {message}")]
    Tensor {
        /// The collective.
        op: &'static str,
        /// What is wrong with the tensor.
        message: String,
    },
    /// c10d raised an error (the message is libtorch's).
    #[error("{op} (rank {rank} of {world}): {message}")]
    C10d {
        /// `init`, `all_reduce`, ...
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The group size.
        world: usize,
        /// libtorch's message.
        message: String,
    },
}

/// The collective backend: c10d's Gloo for CPU tensors, NCCL for CUDA tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `ProcessGroupGloo` (CPU).
    Gloo,
    /// `ProcessGroupNCCL` (CUDA); compiled in only when the CUDA and NCCL headers were found.
    Nccl,
}

impl Backend {
    /// The backend for tensors on `device`.
    pub fn for_device(device: tch::Device) -> Backend {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    /// Whether this build carries the backend.
    pub fn available(self) -> bool {
        match self {
            Backend::Gloo => true,
            // SAFETY: no arguments, returns a constant.
            Backend::Nccl => unsafe { rise_dist_has_nccl() != 0 },
        }
    }
}

/// Where and as whom a process joins a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// The master's address (rank 0 serves the store there).
    pub addr: String,
    /// The store's TCP port.
    pub port: u16,
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// The number of ranks.
    pub world: usize,
}

/// The environment variables rise's own launcher sets for each rank (torchrun's
/// `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT`, prefixed so that a rank never picks up a
/// torchrun environment by accident).
pub const ENV_RANK: &str = "RISE_RANK";
/// See [`ENV_RANK`].
pub const ENV_WORLD: &str = "RISE_WORLD_SIZE";
/// See [`ENV_RANK`].
pub const ENV_MASTER_ADDR: &str = "RISE_MASTER_ADDR";
/// See [`ENV_RANK`].
pub const ENV_MASTER_PORT: &str = "RISE_MASTER_PORT";

impl Rendezvous {
    /// Checks the fields.
    pub fn new(
        addr: impl Into<String>,
        port: u16,
        rank: usize,
        world: usize,
    ) -> Result<Self, DistError> {
        let addr = addr.into();
        if world == 0 {
            return Err(DistError::Rendezvous(
                "world size must be at least 1".into(),
            ));
        }
        if rank >= world {
            return Err(DistError::Rendezvous(format!(
                "rank {rank} is not below the world size {world}"
            )));
        }
        if addr.is_empty() || addr.contains('\0') {
            return Err(DistError::Rendezvous(format!(
                "bad master address {addr:?}"
            )));
        }
        if port == 0 {
            return Err(DistError::Rendezvous("master port 0".into()));
        }
        Ok(Rendezvous {
            addr,
            port,
            rank,
            world,
        })
    }

    /// From `get` (an environment lookup): rise's launcher variables ([`ENV_RANK`], ...)
    /// if `RISE_RANK` is set; else Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`, the master the
    /// first node of `SLURM_JOB_NODELIST`, the port `RISE_MASTER_PORT` or 29500 + the job
    /// id mod 1000, so that two jobs sharing a node do not collide) when `SLURM_PROCID` is
    /// set and `SLURM_NTASKS` > 1; else `None` (one process).
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let num =
            |name: &str| -> Result<Option<usize>, DistError> {
                match get(name) {
                    None => Ok(None),
                    Some(v) => v.trim().parse().map(Some).map_err(|_| {
                        DistError::Rendezvous(format!("{name}={v:?} is not a number"))
                    }),
                }
            };
        let port = |v: String, name: &str| -> Result<u16, DistError> {
            v.trim()
                .parse()
                .map_err(|_| DistError::Rendezvous(format!("{name}={v:?} is not a port")))
        };
        if let Some(rank) = num(ENV_RANK)? {
            let world = num(ENV_WORLD)?
                .ok_or_else(|| DistError::Rendezvous(format!("{ENV_RANK} without {ENV_WORLD}")))?;
            let addr = get(ENV_MASTER_ADDR).unwrap_or_else(|| "127.0.0.1".into());
            let p = get(ENV_MASTER_PORT).ok_or_else(|| {
                DistError::Rendezvous(format!("{ENV_RANK} without {ENV_MASTER_PORT}"))
            })?;
            return Rendezvous::new(addr, port(p, ENV_MASTER_PORT)?, rank, world).map(Some);
        }
        let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) else {
            return Ok(None);
        };
        if world <= 1 {
            return Ok(None);
        }
        let nodes = get("SLURM_JOB_NODELIST")
            .or_else(|| get("SLURM_NODELIST"))
            .ok_or_else(|| {
                DistError::Rendezvous("SLURM_PROCID without SLURM_JOB_NODELIST".into())
            })?;
        let addr = first_host(&nodes)?;
        let p = match get(ENV_MASTER_PORT) {
            Some(p) => port(p, ENV_MASTER_PORT)?,
            None => 29500 + (num("SLURM_JOB_ID")?.unwrap_or(0) % 1000) as u16,
        };
        Rendezvous::new(addr, p, rank, world).map(Some)
    }

    /// [`Rendezvous::from_env_with`] on the process environment.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_env_with(|k| std::env::var(k).ok())
    }
}

/// The first host of a Slurm node list, as `scontrol show hostnames` would print it first:
/// `gpu[03-05,9],cpu1` → `gpu03`.
pub fn first_host(list: &str) -> Result<String, DistError> {
    let bad = || DistError::Rendezvous(format!("cannot read the Slurm node list {list:?}"));
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if list[end..].starts_with('[') {
        let inner = &list[end + 1..list[end..].find(']').map(|i| end + i).ok_or_else(bad)?];
        let first = inner.split(',').next().ok_or_else(bad)?;
        let first = first.split('-').next().ok_or_else(bad)?;
        if prefix.is_empty() || first.is_empty() {
            return Err(bad());
        }
        return Ok(format!("{prefix}{first}"));
    }
    if prefix.is_empty() {
        return Err(bad());
    }
    Ok(prefix.to_string())
}

/// A c10d process group this process belongs to.
pub struct ProcessGroup {
    raw: *mut RawGroup,
    rank: usize,
    world: usize,
    backend: Backend,
}

// SAFETY: the C++ object is used only through `&self` methods that c10d allows from any
// thread (one at a time per group is the caller's contract, as in torch.distributed, and the
// methods below take `&mut` where they write tensors).
unsafe impl Send for ProcessGroup {}

/// Takes ownership of a message the shim allocated.
fn take_err(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error (no message)".into();
    }
    // SAFETY: the shim returns a NUL-terminated malloc'd string, freed once here.
    let s = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { rise_dist_free_err(err) };
    s
}

fn ptr(t: &Tensor) -> *mut C_tensor {
    // The shim takes `torch::Tensor*` and only reads the handle (the collective writes the
    // tensor's storage, which tch models as interior mutability, like every in-place op).
    t.as_ptr() as *mut C_tensor
}

impl ProcessGroup {
    /// Joins the group described by `rdv` (blocks until every rank has joined, or `timeout`).
    /// `timeout` also bounds each collective.
    pub fn init(rdv: &Rendezvous, backend: Backend, timeout: Duration) -> Result<Self, DistError> {
        let fail = |message: String| DistError::C10d {
            op: "init",
            rank: rdv.rank,
            world: rdv.world,
            message,
        };
        if !backend.available() {
            return Err(fail(
                "this build has no NCCL backend: rise-dist was compiled without the CUDA/NCCL \
                 headers (see crates/rise-dist/build.rs)"
                    .into(),
            ));
        }
        let addr = CString::new(rdv.addr.as_str())
            .map_err(|_| DistError::Rendezvous("address holds a NUL byte".into()))?;
        let mut err: *mut c_char = std::ptr::null_mut();
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        // SAFETY: valid C string, out-pointer for the error.
        let raw = unsafe {
            rise_dist_init(
                addr.as_ptr(),
                rdv.port,
                rdv.rank as c_int,
                rdv.world as c_int,
                match backend {
                    Backend::Gloo => 0,
                    Backend::Nccl => 1,
                },
                ms,
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(fail(take_err(err)));
        }
        Ok(ProcessGroup {
            raw,
            rank: rdv.rank,
            world: rdv.world,
            backend,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn check(&self, op: &'static str, t: &Tensor) -> Result<(), DistError> {
        let bad = |message: String| Err(DistError::Tensor { op, message });
        if !t.defined() {
            return bad("undefined tensor".into());
        }
        if !t.is_contiguous() {
            return bad("the tensor must be contiguous".into());
        }
        let want = Backend::for_device(t.device());
        if want != self.backend {
            return bad(format!(
                "a tensor on {:?} needs the {want:?} backend; this group is {:?}",
                t.device(),
                self.backend
            ));
        }
        Ok(())
    }

    fn done(&self, op: &'static str, rc: c_int, err: *mut c_char) -> Result<(), DistError> {
        if rc == 0 {
            return Ok(());
        }
        Err(DistError::C10d {
            op,
            rank: self.rank,
            world: self.world,
            message: take_err(err),
        })
    }

    /// In place: `t` becomes the elementwise sum of every rank's `t`. (Gloo has no average;
    /// callers scale.)
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError> {
        self.check("all_reduce", t)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: live group and tensor handles.
        let rc = unsafe { rise_dist_all_reduce_sum(self.raw, ptr(t), &mut err) };
        self.done("all_reduce", rc, err)
    }

    /// `out` (n elements) becomes this rank's chunk `rank*n..(rank+1)*n` of the sum of every
    /// rank's `input` (world × n elements, same kind).
    pub fn reduce_scatter_sum(&self, out: &mut Tensor, input: &Tensor) -> Result<(), DistError> {
        self.check("reduce_scatter", out)?;
        self.check("reduce_scatter", input)?;
        self.sizes("reduce_scatter", out, input)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: live handles.
        let rc = unsafe { rise_dist_reduce_scatter_sum(self.raw, ptr(out), ptr(input), &mut err) };
        self.done("reduce_scatter", rc, err)
    }

    /// `out` (world × n elements) becomes every rank's `input` (n elements), in rank order.
    pub fn all_gather(&self, out: &mut Tensor, input: &Tensor) -> Result<(), DistError> {
        self.check("all_gather", out)?;
        self.check("all_gather", input)?;
        self.sizes("all_gather", input, out)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: live handles.
        let rc = unsafe { rise_dist_all_gather(self.raw, ptr(out), ptr(input), &mut err) };
        self.done("all_gather", rc, err)
    }

    /// In place: every rank's `t` becomes rank `root`'s.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        self.check("broadcast", t)?;
        if root >= self.world {
            return Err(DistError::Tensor {
                op: "broadcast",
                message: format!("root {root} is not a rank of a group of {}", self.world),
            });
        }
        let mut err = std::ptr::null_mut();
        // SAFETY: live handles.
        let rc = unsafe { rise_dist_broadcast(self.raw, ptr(t), root as c_int, &mut err) };
        self.done("broadcast", rc, err)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: live handle.
        let rc = unsafe { rise_dist_barrier(self.raw, &mut err) };
        self.done("barrier", rc, err)
    }

    /// `small` × world must be `big`, of one kind.
    fn sizes(&self, op: &'static str, small: &Tensor, big: &Tensor) -> Result<(), DistError> {
        if small.kind() != big.kind() || small.numel() * self.world != big.numel() {
            return Err(DistError::Tensor {
                op,
                message: format!(
                    "needs {:?} tensors of n and {} × n elements; got {:?} {} and {:?} {}",
                    small.kind(),
                    self.world,
                    small.kind(),
                    small.numel(),
                    big.kind(),
                    big.numel()
                ),
            });
        }
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by rise_dist_init, freed once.
        unsafe { rise_dist_free(self.raw) }
    }
}

/// A free TCP port on 127.0.0.1 for a local group's store (the OS picks it; another process
/// could take it before rank 0 binds it, which the rendezvous would report as an error).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_reads_slurm_lists() {
        assert_eq!(first_host("gpu[03-05,9],cpu1").unwrap(), "gpu03");
        assert_eq!(first_host("node7").unwrap(), "node7");
        assert_eq!(first_host("a1,b2").unwrap(), "a1");
        assert_eq!(first_host("n[10]").unwrap(), "n10");
        assert!(first_host("").is_err());
        assert!(first_host("n[1-2").is_err());
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn rendezvous_from_rise_then_slurm_env() {
        assert_eq!(Rendezvous::from_env_with(env(&[])).unwrap(), None);
        let r = Rendezvous::from_env_with(env(&[
            (ENV_RANK, "1"),
            (ENV_WORLD, "2"),
            (ENV_MASTER_PORT, "4000"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(r, Rendezvous::new("127.0.0.1", 4000, 1, 2).unwrap());
        let r = Rendezvous::from_env_with(env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_JOB_NODELIST", "gpu[12-13]"),
            ("SLURM_JOB_ID", "123456"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(r, Rendezvous::new("gpu12", 29956, 3, 8).unwrap());
        // One Slurm task is one process, not a group.
        let one = env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]);
        assert_eq!(Rendezvous::from_env_with(one).unwrap(), None);
        assert!(Rendezvous::from_env_with(env(&[
            (ENV_RANK, "2"),
            (ENV_WORLD, "2"),
            (ENV_MASTER_PORT, "1")
        ]))
        .is_err());
        assert!(Rendezvous::from_env_with(env(&[(ENV_RANK, "x")])).is_err());
    }
}
