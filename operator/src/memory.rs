//! The operator's own memory, as its allocator (jemalloc) counts it:
//! `somastack_heap_allocated_bytes` (live objects) and
//! `somastack_heap_resident_bytes` (pages the allocator holds). Together with
//! the process RSS they tell growth of live data from memory kept by the
//! allocator (docs/operations.md, hack/bench-memory.sh).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tikv_jemalloc_ctl::{epoch, stats};

/// Reads jemalloc's statistics at each scrape.
#[derive(Debug)]
struct Heap;

impl Collector for Heap {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // jemalloc caches its statistics until the epoch advances.
        if epoch::advance().is_err() {
            return Ok(());
        }
        let figures = [
            (
                "somastack_heap_allocated_bytes",
                "Bytes of live objects the operator has allocated (jemalloc stats.allocated)",
                stats::allocated::read(),
            ),
            (
                "somastack_heap_resident_bytes",
                "Bytes of memory the allocator holds in physical pages (jemalloc stats.resident)",
                stats::resident::read(),
            ),
        ];
        for (name, help, value) in figures {
            let Ok(value) = value else { continue };
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Adds the heap figures to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Heap));
}
