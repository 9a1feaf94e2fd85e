//! Two ranks on 127.0.0.1 (Gloo), one thread each in this process: every collective the
//! shim exposes, checked against what c10d documents.
use std::time::Duration;

use rise_dist::{free_port, Backend, DistError, ProcessGroup, Rendezvous};
use tch::{Device, Kind, Tensor};

/// Runs `f(group)` on `world` ranks (one thread each) and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(ProcessGroup) -> T + Send + Sync + Copy + 'static,
) -> Vec<T> {
    let port = free_port().unwrap();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            std::thread::spawn(move || {
                let rdv = Rendezvous::new("127.0.0.1", port, rank, world).unwrap();
                let pg = ProcessGroup::init(&rdv, Backend::Gloo, Duration::from_secs(60)).unwrap();
                f(pg)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1])).unwrap()
}

#[test]
fn all_reduce_sums_in_place() {
    let out = on_ranks(2, |pg| {
        let r = pg.rank() as f32;
        let mut t = Tensor::from_slice(&[1.0f32 + r, 10.0 * r, -3.0]);
        pg.all_reduce_sum(&mut t).unwrap();
        values(&t)
    });
    for v in out {
        assert_eq!(v, vec![3.0, 10.0, -6.0]);
    }
}

#[test]
fn reduce_scatter_gives_each_rank_its_chunk_of_the_sum() {
    let out = on_ranks(2, |pg| {
        let r = pg.rank() as f32;
        let input = Tensor::from_slice(&[1.0f32, 2.0, 3.0 + r, 4.0 * (r + 1.0)]);
        let mut out = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        pg.reduce_scatter_sum(&mut out, &input).unwrap();
        values(&out)
    });
    assert_eq!(out[0], vec![2.0, 4.0]);
    assert_eq!(out[1], vec![7.0, 12.0]);
}

#[test]
fn all_gather_concatenates_in_rank_order() {
    let out = on_ranks(2, |pg| {
        let r = pg.rank() as f32;
        let input = Tensor::from_slice(&[r, r + 0.5, r + 0.25]);
        let mut out = Tensor::zeros([6], (Kind::Float, Device::Cpu));
        // Gathering into a view of a bigger buffer writes through to it.
        pg.all_gather(&mut out, &input).unwrap();
        values(&out)
    });
    for v in out {
        assert_eq!(v, vec![0.0, 0.5, 0.25, 1.0, 1.5, 1.25]);
    }
}

#[test]
fn broadcast_and_barrier() {
    let out = on_ranks(2, |pg| {
        let mut t = Tensor::from_slice(&[pg.rank() as f32 + 7.0; 4]);
        pg.broadcast(&mut t, 1).unwrap();
        pg.barrier().unwrap();
        values(&t)
    });
    for v in out {
        assert_eq!(v, vec![8.0; 4]);
    }
}

#[test]
fn wrong_sizes_and_layouts_are_refused_before_c10d() {
    let out = on_ranks(2, |pg| {
        let mut small = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let big = Tensor::zeros([5], (Kind::Float, Device::Cpu));
        let a = pg.reduce_scatter_sum(&mut small, &big).unwrap_err();
        let mut strided = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).tr();
        let b = pg.all_reduce_sum(&mut strided).unwrap_err();
        let mut t = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let c = pg.broadcast(&mut t, 2).unwrap_err();
        // The group still works after refused calls (nothing reached c10d).
        let mut one = Tensor::ones([1], (Kind::Float, Device::Cpu));
        pg.all_reduce_sum(&mut one).unwrap();
        (a.to_string(), b.to_string(), c.to_string(), values(&one))
    });
    for (a, b, c, one) in out {
        assert!(a.contains("2 × n"), "{a}");
        assert!(b.contains("contiguous"), "{b}");
        assert!(c.contains("root 2"), "{c}");
        assert_eq!(one, vec![2.0]);
    }
}

#[test]
fn a_peer_that_never_joins_is_a_timeout_error_naming_the_rank() {
    let port = free_port().unwrap();
    let rdv = Rendezvous::new("127.0.0.1", port, 0, 2).unwrap();
    let Err(err) = ProcessGroup::init(&rdv, Backend::Gloo, Duration::from_secs(2)) else {
        panic!("a group of 2 formed with one rank")
    };
    assert!(
        matches!(
            err,
            DistError::C10d {
                op: "init",
                rank: 0,
                world: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn nccl_is_refused_clearly_when_compiled_out() {
    if Backend::Nccl.available() {
        return;
    }
    let rdv = Rendezvous::new("127.0.0.1", free_port().unwrap(), 0, 1).unwrap();
    let err = ProcessGroup::init(&rdv, Backend::Nccl, Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(err.to_string().contains("no NCCL backend"), "{err}");
}
