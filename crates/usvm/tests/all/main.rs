//! usvm's integration tests, one binary (one link) for all of them.

mod attrs;
mod gpu;
mod history;
mod hygiene;
mod inject;
mod isa;
mod kfd;
mod migrate;
mod notifier;
mod pm4;
mod policy;
mod readonly;
mod stress;
mod util;
