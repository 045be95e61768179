//! GPU telemetry as Prometheus gauges, named after NVIDIA DCGM's exporter
//! (memory, utilisation, power, clocks) in base units and labelled by card:
//! `sluice_gpu_memory_used_bytes{gpu="0",uuid="GPU-…",name="NVIDIA H100 …"}`.
//!
//! The runtime reads the cards ([`GpuTelemetrySource`]); this module polls
//! it every [`POLL_EVERY`] and records the readings, so the runtime never
//! depends on the exporter. Without a GPU (or a build without `cuda`) no
//! poller runs and no `sluice_gpu_` series exist.

use std::sync::Arc;
use std::time::Duration;

use sluice_runtime::gpu_telemetry::{GpuReading, GpuTelemetrySource, Nvml};
use tokio_util::sync::CancellationToken;

pub const MEMORY_USED_BYTES: &str = "sluice_gpu_memory_used_bytes";
pub const MEMORY_TOTAL_BYTES: &str = "sluice_gpu_memory_total_bytes";
pub const UTILIZATION_RATIO: &str = "sluice_gpu_utilization_ratio";
pub const MEMORY_UTILIZATION_RATIO: &str = "sluice_gpu_memory_utilization_ratio";
pub const POWER_WATTS: &str = "sluice_gpu_power_watts";
pub const SM_CLOCK_HZ: &str = "sluice_gpu_sm_clock_hz";
pub const MEMORY_CLOCK_HZ: &str = "sluice_gpu_memory_clock_hz";

/// NVML's utilisation is averaged over its own sample period (about a
/// second); polling faster would only repeat it. Prometheus scrapes every
/// 15 s by default, so 5 s keeps each scrape fresh.
pub const POLL_EVERY: Duration = Duration::from_secs(5);

/// Describes the gauges (their help text in `/metrics`).
fn describe() {
    use metrics::{describe_gauge, Unit};
    describe_gauge!(MEMORY_USED_BYTES, Unit::Bytes, "GPU memory in use.");
    describe_gauge!(MEMORY_TOTAL_BYTES, Unit::Bytes, "GPU memory in total.");
    describe_gauge!(
        UTILIZATION_RATIO,
        "Share of the last sample period a kernel ran on the GPU."
    );
    describe_gauge!(
        MEMORY_UTILIZATION_RATIO,
        "Share of the last sample period GPU memory was read or written."
    );
    describe_gauge!(POWER_WATTS, "GPU power draw in watts.");
    describe_gauge!(SM_CLOCK_HZ, "GPU streaming multiprocessor clock in hertz.");
    describe_gauge!(MEMORY_CLOCK_HZ, "GPU memory clock in hertz.");
}

/// Sets every gauge of each card in `readings`.
pub fn record(readings: &[GpuReading]) {
    for r in readings {
        let labels = [
            ("gpu", r.index.to_string()),
            ("uuid", r.uuid.clone()),
            ("name", r.name.clone()),
        ];
        // Bytes as f64 are exact up to 2^53 (8 PiB).
        metrics::gauge!(MEMORY_USED_BYTES, &labels).set(r.memory_used_bytes as f64);
        metrics::gauge!(MEMORY_TOTAL_BYTES, &labels).set(r.memory_total_bytes as f64);
        metrics::gauge!(UTILIZATION_RATIO, &labels).set(r.utilization_ratio);
        metrics::gauge!(MEMORY_UTILIZATION_RATIO, &labels).set(r.memory_utilization_ratio);
        metrics::gauge!(POWER_WATTS, &labels).set(r.power_watts);
        metrics::gauge!(SM_CLOCK_HZ, &labels).set(r.sm_clock_hz);
        metrics::gauge!(MEMORY_CLOCK_HZ, &labels).set(r.memory_clock_hz);
    }
}

/// The poller for this machine's cards, or `None` where there are none
/// (nothing to run, no series).
pub fn detect() -> Option<Arc<dyn GpuTelemetrySource>> {
    Nvml::detect().map(|n| Arc::new(n) as Arc<dyn GpuTelemetrySource>)
}

/// Reads `source` and records it every `every` until shutdown, the first
/// time at once. A read runs on the blocking pool (NVML calls the driver).
pub async fn poll(
    source: Arc<dyn GpuTelemetrySource>,
    every: Duration,
    shutdown: CancellationToken,
) {
    describe();
    let mut ticks = tokio::time::interval(every);
    // After a stall, one reading is enough: a burst would repeat it.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let source = source.clone();
        match tokio::task::spawn_blocking(move || source.read()).await {
            Ok(readings) => record(&readings),
            Err(e) => tracing::warn!(error = %e, "reading GPU telemetry failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn h100(index: u32, used: u64) -> GpuReading {
        GpuReading {
            index,
            uuid: format!("GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd"),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_used_bytes: used,
            memory_total_bytes: 85_520_809_984,
            utilization_ratio: 0.87,
            memory_utilization_ratio: 0.42,
            power_watts: 412.5,
            sm_clock_hz: 1_980e6,
            memory_clock_hz: 2_619e6,
        }
    }

    /// `record` into a recorder of the test's own, rendered as `/metrics` is.
    fn rendered(readings: &[GpuReading]) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            record(readings);
        });
        handle.render()
    }

    /// The line of `name` for card `gpu`, without its value.
    fn value(text: &str, name: &str, gpu: u32) -> Option<f64> {
        let prefix = format!("{name}{{gpu=\"{gpu}\",");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn each_card_gets_its_gauges_under_the_dcgm_like_names_labelled_by_index_and_uuid() {
        let text = rendered(&[h100(0, 60_000_000_000), h100(1, 1_000)]);
        assert_eq!(value(&text, MEMORY_USED_BYTES, 0), Some(60e9), "{text}");
        assert_eq!(value(&text, MEMORY_USED_BYTES, 1), Some(1000.0), "{text}");
        assert_eq!(value(&text, MEMORY_TOTAL_BYTES, 1), Some(85_520_809_984.0));
        assert_eq!(value(&text, UTILIZATION_RATIO, 0), Some(0.87));
        assert_eq!(value(&text, MEMORY_UTILIZATION_RATIO, 0), Some(0.42));
        assert_eq!(value(&text, POWER_WATTS, 1), Some(412.5));
        assert_eq!(value(&text, SM_CLOCK_HZ, 0), Some(1.98e9));
        assert_eq!(value(&text, MEMORY_CLOCK_HZ, 0), Some(2.619e9));
        // The exporter keeps the colon (`sluice:`), as vLLM's names do.
        assert!(
            text.contains(
                "sluice_gpu_power_watts{gpu=\"1\",uuid=\"GPU-00000001-aaaa-bbbb-cccc-dddddddddddd\",name=\"NVIDIA H100 80GB HBM3\"} 412.5"
            ),
            "{text}"
        );
        assert!(
            text.contains("# HELP sluice_gpu_memory_used_bytes"),
            "{text}"
        );
    }

    #[test]
    fn without_a_gpu_there_are_no_gpu_series() {
        assert!(!rendered(&[]).contains("sluice_gpu_"));
        // This machine's own cards: none here (or a build without `cuda`),
        // so nothing is polled.
        if !cfg!(feature = "cuda") {
            assert!(detect().is_none());
        }
    }

    struct Counting(AtomicUsize);

    impl GpuTelemetrySource for Counting {
        fn read(&self) -> Vec<GpuReading> {
            self.0.fetch_add(1, Ordering::Relaxed);
            vec![h100(0, 1)]
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_poller_reads_once_per_interval_until_shutdown() {
        let source = Arc::new(Counting(AtomicUsize::new(0)));
        let shutdown = CancellationToken::new();
        let poller = tokio::spawn(poll(
            source.clone(),
            Duration::from_secs(5),
            shutdown.clone(),
        ));
        // The first read is immediate; then one per 5 s of (paused) time.
        tokio::time::sleep(Duration::from_millis(1)).await;
        wait_for_reads(&source, 1).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        wait_for_reads(&source, 3).await;
        shutdown.cancel();
        poller.await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(source.0.load(Ordering::Relaxed), 3);
    }

    /// Reads run on the blocking pool, which paused time does not drive:
    /// yield until the count arrives.
    async fn wait_for_reads(source: &Counting, n: usize) {
        for _ in 0..1000 {
            if source.0.load(Ordering::Relaxed) >= n {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(source.0.load(Ordering::Relaxed), n);
    }
}
