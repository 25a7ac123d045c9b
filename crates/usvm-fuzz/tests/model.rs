//! Property test: random sequences of SET_ATTR / GET_ATTR (valid and invalid) against the
//! per-page reference model (`usvm_fuzz::model`). Every errno, every GET result and the
//! range boundaries with their attributes must agree after every call.
//!
//! (It lived in `crates/usvm/tests/all/model.rs` before the model moved here, to be shared
//! with the `ioctl` fuzz target; the test itself is unchanged.)

use proptest::prelude::*;
use usvm::uapi::*;
use usvm::{RawAttr, Svm};
use usvm_fuzz::mem::{MIB, Mapping, PAGE, errno};
use usvm_fuzz::model::{HOLES, MAX_PAGES, Model, W, real_ranges};

const UNDEF: u32 = KFD_IOCTL_SVM_LOCATION_UNDEFINED;

/// One generated call.
#[derive(Clone, Debug)]
enum Call {
    Ioctl { op: u32, start: u64, npages: u64, skew: u8, attrs: Vec<(u32, u32)> },
    Xnack(bool),
}

fn attr_strategy() -> impl Strategy<Value = (u32, u32)> {
    let ty = prop_oneof![20 => 0u32..8, 1 => 8u32..10];
    (ty, 0u8..8, any::<u32>()).prop_map(|(ty, sel, raw)| {
        // Values are chosen from pools that matter for the type; the GPU ids are 0x1111 and
        // 0x2222 (the instance's), 0xdead is unknown. `raw` gives random flags / sizes.
        let v = match ty {
            0 | 1 => [0, UNDEF, 0x1111, 0x2222, 0x1111, 0x2222, 0xdead, raw][sel as usize],
            2..=4 => [0x1111, 0x2222, 0x1111, 0x2222, 0x1111, 0x2222, 0xdead, 0][sel as usize],
            5 | 6 => [0x1, 0x2, 0x8, 0x10, 0x40, raw & 0xff, raw, 0x3][sel as usize],
            7 => [0, 1, 5, 9, 63, 64, 100, raw][sel as usize],
            _ => raw,
        };
        (ty, v)
    })
}

fn call_strategy() -> impl Strategy<Value = Call> {
    let op = prop_oneof![12 => Just(0u32), 8 => Just(1u32), 1 => Just(2u32)];
    let npages = prop_oneof![4 => 1u64..16, 3 => 1u64..700, 1 => 1u64..=W];
    let skew = prop_oneof![30 => Just(0u8), 1 => 1u8..5];
    let ioctl = (op, 0..W, npages, skew, prop::collection::vec(attr_strategy(), 0..5)).prop_map(
        |(op, start, npages, skew, attrs)| Call::Ioctl {
            op,
            start,
            npages: npages.min(W - start),
            skew,
            attrs,
        },
    );
    prop_oneof![30 => ioctl, 1 => any::<bool>().prop_map(Call::Xnack)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn set_get_match_the_model(xnack in any::<bool>(), calls in prop::collection::vec(call_strategy(), 1..40)) {
        let svm = Svm::builder().gpus(2).vram_bytes(64 << 20).xnack(xnack).build().unwrap();
        prop_assert_eq!(svm.max_range_bytes(), MAX_PAGES as usize * PAGE);
        let map = Mapping::anon(W as usize * PAGE, 2 * MIB);
        for (p, n) in HOLES {
            map.punch(p as usize * PAGE, n as usize * PAGE);
        }
        let base = map.addr as u64 >> 12;
        let mut model = Model::new(base, svm.gpu_ids().iter().map(|g| g.0).collect(), xnack);
        for (i, call) in calls.iter().enumerate() {
            match call {
                Call::Xnack(on) => {
                    svm.set_xnack(*on).unwrap();
                    model.xnack = *on;
                }
                Call::Ioctl { op, start, npages, skew, attrs } => {
                    let mut start = (base + start) << 12;
                    let mut size = npages << 12;
                    match skew {
                        1 => start += 1,
                        2 => size += 2048,
                        3 => size = 0,
                        4 => start = 0,
                        _ => {}
                    }
                    let mut real: Vec<RawAttr> = attrs.iter().map(|&(t, v)| RawAttr::new(t, v)).collect();
                    // GET queries use query types only most of the time.
                    if *op == KFD_IOCTL_SVM_OP_GET_ATTR {
                        for a in real.iter_mut() {
                            if a.ty == 3 && a.value % 2 == 0 { a.ty = 2; }
                        }
                    }
                    let mut expect = real.clone();
                    let got = errno(svm.svm_ioctl(*op, start, size, &mut real));
                    let want = model.ioctl(*op, start, size, &mut expect);
                    prop_assert_eq!(got, want, "call {}: {:?}", i, call);
                    prop_assert_eq!(&real, &expect, "call {} results: {:?}", i, call);
                }
            }
            prop_assert_eq!(real_ranges(&svm, base), model.ranges(), "ranges after call {}: {:?}", i, call);
        }
    }
}
