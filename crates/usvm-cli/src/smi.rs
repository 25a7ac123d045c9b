//! `usvm smi` and `--smi`: a per-GPU snapshot as amd-smi / rocm-smi show one: VRAM total,
//! used, free and peak, buffer objects, resident and mapped pages, queue state.

use crate::table::Table;
use crate::units::bytes;
use serde_json::json;
use usvm::Svm;

/// The snapshot as a table.
pub fn render(svm: &Svm) -> String {
    let mut t = Table::new(&[
        "gpu",
        "vram total",
        "vram used",
        "vram free",
        "vram peak",
        "in flight",
        "BOs",
        "resident pages",
        "mapped pages",
        "queues",
    ]);
    for g in svm.smi() {
        t.row(vec![
            format!("{:#x}", g.id.0),
            bytes(g.vram_bytes),
            bytes(g.vram_used),
            bytes(g.vram_free),
            bytes(g.vram_peak),
            bytes(g.vram_reserved),
            g.bos.to_string(),
            g.resident_pages.to_string(),
            g.mapped_pages.to_string(),
            if g.queues_suspended { "evicted" } else { "running" }.to_string(),
        ]);
    }
    t.render()
}

/// The snapshot as JSON.
pub fn to_json(svm: &Svm, when: &str) -> serde_json::Value {
    let gpus: Vec<_> = svm
        .smi()
        .into_iter()
        .map(|g| {
            json!({
                "gpu": g.id.0,
                "vram_total": g.vram_bytes,
                "vram_used": g.vram_used,
                "vram_free": g.vram_free,
                "vram_peak": g.vram_peak,
                "vram_in_flight": g.vram_reserved,
                "bos": g.bos,
                "resident_pages": g.resident_pages,
                "mapped_pages": g.mapped_pages,
                "queues_evicted": g.queues_suspended,
            })
        })
        .collect();
    json!({ "smi": when, "gpus": gpus })
}

/// The snapshot as printed (a JSON line with `json`), labelled `when`.
pub fn text(svm: &Svm, when: &str, json: bool) -> String {
    if json { format!("{}\n", to_json(svm, when)) } else { format!("\nsmi ({when})\n{}", render(svm)) }
}

/// Prints the snapshot (a JSON line with `json`), labelled `when`.
pub fn print(svm: &Svm, when: &str, json: bool) {
    crate::progress::out(&text(svm, when, json));
}
