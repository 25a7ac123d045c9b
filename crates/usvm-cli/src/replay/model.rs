//! Modeled time on named hardware: a replay's wall time is this machine's CPU emulating
//! GPUs, so `usvm replay` also prices what the replay measured (bytes each way, faults) and
//! what the trace recorded (compute time, bytes accessed) with published figures of real
//! machines. The figures and their sources are in docs/DESIGN.md ("Replay's hardware
//! profiles"); the model is a serial sum, with no overlap of transfers and compute:
//!
//! ```text
//! modeled = to_vram / h2d + to_ram / d2h                       (the CPU-GPU link)
//!         + gpu_faults * gpu_fault + cpu_faults * cpu_fault    (fault handling)
//!         + gpu_compute * gpu_factor + cpu_compute             (recorded compute, scaled)
//!         + gpu_bytes / hbm + cpu_bytes / host                 (the accesses themselves)
//! ```

use super::format::{Op, Trace};
use super::play::Played;
use std::collections::HashMap;

/// One host core's FP32 peak the emulated kernels ran at (GFLOP/s): 2 FMA pipes x 8
/// lanes x 2 flops x 3 GHz. A profile's `gpu_factor` is this over the GPU's FP32 peak.
pub const HOST_CORE_GFLOPS: f64 = 96.0;

/// A named machine.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// The short name (JSON key, table column).
    pub key: &'static str,
    /// What it is.
    pub name: &'static str,
    /// Host to device bandwidth of the CPU-GPU link (GB/s, 1e9 bytes, one direction).
    pub h2d_gbs: f64,
    /// Device to host bandwidth (GB/s).
    pub d2h_gbs: f64,
    /// Time to handle one GPU retry fault (a batch of faults on one granule), seconds.
    pub gpu_fault_s: f64,
    /// Time to handle one CPU fault that migrates data back from VRAM, seconds.
    pub cpu_fault_s: f64,
    /// The GPU's own memory bandwidth (GB/s).
    pub hbm_gbs: f64,
    /// One host core's streaming bandwidth (GB/s).
    pub host_gbs: f64,
    /// The GPU's FP32 vector peak (GFLOP/s); `gpu_factor` follows from it.
    pub gpu_gflops: f64,
}

impl Profile {
    /// How much faster the GPU runs the recorded kernels' compute than the host core that
    /// emulated them (a factor under 1: the time is multiplied by it).
    pub fn gpu_factor(&self) -> f64 {
        HOST_CORE_GFLOPS / self.gpu_gflops
    }
}

/// The machines replay prices every run on (figures: docs/DESIGN.md).
pub const PROFILES: [Profile; 3] = [
    Profile {
        key: "mi210",
        name: "AMD MI210, PCIe 4.0 x16",
        h2d_gbs: 32.0,
        d2h_gbs: 32.0,
        gpu_fault_s: 30e-6,
        cpu_fault_s: 15e-6,
        hbm_gbs: 1638.0,
        host_gbs: 20.0,
        gpu_gflops: 22_600.0,
    },
    Profile {
        key: "mi250x",
        name: "AMD MI250X (one GCD), Infinity Fabric CPU-GPU",
        h2d_gbs: 36.0,
        d2h_gbs: 36.0,
        gpu_fault_s: 30e-6,
        cpu_fault_s: 15e-6,
        hbm_gbs: 1638.0,
        host_gbs: 20.0,
        gpu_gflops: 23_950.0,
    },
    Profile {
        key: "h100",
        name: "NVIDIA H100 PCIe, PCIe 5.0 x16",
        h2d_gbs: 64.0,
        d2h_gbs: 64.0,
        gpu_fault_s: 30e-6,
        cpu_fault_s: 15e-6,
        hbm_gbs: 2000.0,
        host_gbs: 20.0,
        gpu_gflops: 51_200.0,
    },
];

/// What the trace says of the work itself, apart from memory management.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compute {
    /// The busiest CPU thread's time outside its recorded calls and accesses (ns).
    pub cpu_ns: u64,
    /// The busiest GPU's kernel time outside their loads and stores (ns).
    pub gpu_ns: u64,
    /// Bytes the CPU loaded and stored.
    pub cpu_bytes: u64,
    /// Bytes the kernels loaded and stored.
    pub gpu_bytes: u64,
}

impl Compute {
    /// The compute of a trace.
    pub fn of(t: &Trace) -> Compute {
        let mut c = Compute::default();
        // Per CPU thread: first start, last end, time inside records.
        let mut threads: HashMap<u32, (u64, u64, u64)> = HashMap::new();
        let mut queue_gpu: Vec<u32> = Vec::new();
        let mut kernel_gpu: Vec<u32> = Vec::new();
        // Per kernel: time inside its accesses; per GPU: kernel time outside them.
        let mut inside: Vec<u64> = Vec::new();
        let mut per_gpu: HashMap<u32, u64> = HashMap::new();
        for r in &t.recs {
            let end = r.at_ns.saturating_add(r.dur_ns);
            match &r.op {
                Op::Gpu { kernel, span, .. } => {
                    c.gpu_bytes += span.len;
                    inside[*kernel as usize] += r.dur_ns;
                    continue;
                }
                Op::KernelEnd { kernel } => {
                    let busy = r.dur_ns.saturating_sub(inside[*kernel as usize]);
                    *per_gpu.entry(kernel_gpu[*kernel as usize]).or_default() += busy;
                    continue;
                }
                Op::Queue { gpu, .. } => queue_gpu.push(*gpu),
                Op::Launch { queue, .. } => {
                    kernel_gpu.push(queue_gpu[*queue as usize]);
                    inside.push(0);
                }
                Op::Cpu { span, .. } => c.cpu_bytes += span.len,
                _ => {}
            }
            let e = threads.entry(r.thread).or_insert((r.at_ns, end, 0));
            e.0 = e.0.min(r.at_ns);
            e.1 = e.1.max(end);
            e.2 += r.dur_ns;
        }
        c.cpu_ns = threads.values().map(|&(a, b, inside)| (b - a).saturating_sub(inside)).max().unwrap_or(0);
        c.gpu_ns = per_gpu.values().copied().max().unwrap_or(0);
        c
    }
}

/// The modeled seconds of a replay on `p`.
pub fn modeled(p: &Profile, c: &Compute, r: &Played) -> f64 {
    let gb = |bytes: u64, gbs: f64| bytes as f64 / (gbs * 1e9);
    let link = gb(r.to_vram, p.h2d_gbs) + gb(r.to_ram, p.d2h_gbs);
    let faults = r.gpu_faults as f64 * p.gpu_fault_s + r.cpu_faults as f64 * p.cpu_fault_s;
    let compute = c.gpu_ns as f64 * 1e-9 * p.gpu_factor() + c.cpu_ns as f64 * 1e-9;
    let memory = gb(c.gpu_bytes, p.hbm_gbs) + gb(c.cpu_bytes, p.host_gbs);
    link + faults + compute + memory
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::format::{Header, Rec, Span};
    use usvm::Policy;

    fn rec(thread: u32, at_ns: u64, dur_ns: u64, op: Op) -> Rec {
        Rec { thread, at_ns, dur_ns, op }
    }

    #[test]
    fn compute_is_time_outside_the_records() {
        let span = Span { buf: 0, off: 0, len: 4096 };
        let h = Header {
            workload: "w".into(),
            gpus: 1,
            vram: 1 << 20,
            xnack: true,
            granularity: 9,
            policy: "kernel".into(),
            size: 0,
            iterations: 1,
            seed: 1,
            fix: false,
        };
        let recs = vec![
            rec(0, 0, 10, Op::Alloc { buf: 0, len: 4096 }),
            rec(0, 100, 50, Op::Cpu { span, write: true }),
            rec(0, 200, 0, Op::Queue { queue: 0, gpu: 0 }),
            rec(0, 300, 0, Op::Launch { kernel: 0, queue: 0 }),
            rec(0, 400, 100, Op::Gpu { kernel: 0, span, write: false }),
            rec(0, 310, 1000, Op::KernelEnd { kernel: 0 }),
            rec(0, 300, 1100, Op::Wait { kernel: 0 }),
            rec(0, 1500, 100, Op::Cpu { span, write: false }),
        ];
        let c = Compute::of(&Trace { header: h, recs });
        // CPU: 0..1600 with 10 + 50 + 1100 + 100 inside records.
        assert_eq!(c, Compute { cpu_ns: 340, gpu_ns: 900, cpu_bytes: 8192, gpu_bytes: 4096 });
    }

    #[test]
    fn each_term_of_the_model_counts() {
        let base = Played {
            policy: Policy::Kernel,
            vram: 1 << 30,
            wall_s: 1.0,
            gpu_faults: 0,
            cpu_faults: 0,
            to_vram: 0,
            to_ram: 0,
            evicted: 0,
            errors: 0,
            findings: Vec::new(),
        };
        let p = &PROFILES[0];
        let none = Compute::default();
        assert_eq!(modeled(p, &none, &base), 0.0);
        let moved = Played { to_vram: 32_000_000_000, to_ram: 16_000_000_000, ..base.clone() };
        assert!((modeled(p, &none, &moved) - 1.5).abs() < 1e-9);
        let faulted = Played { gpu_faults: 1000, cpu_faults: 1000, ..base.clone() };
        assert!((modeled(p, &none, &faulted) - 0.045).abs() < 1e-9);
        let c = Compute { cpu_ns: 1_000_000_000, gpu_ns: 1_000_000_000, ..none };
        assert!((modeled(p, &c, &base) - (1.0 + p.gpu_factor())).abs() < 1e-9);
        // The faster link and GPU price the same replay lower.
        assert!(modeled(&PROFILES[2], &c, &moved) < modeled(p, &c, &moved));
    }
}
