//! `otlp-sink`: a local OTLP/gRPC trace receiver that accepts and counts
//! spans, so the overhead benchmark can measure Sluice with traces really
//! exported (serialised, sent over gRPC, acknowledged) without a collector
//! installed. It keeps nothing but the count, printed when it stops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Args, Debug)]
pub struct SinkArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:18007")]
    pub listen: SocketAddr,
}

struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves until Ctrl-C (printing the spans received) or until killed.
pub async fn otlp_sink(args: SinkArgs) -> Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("OTLP sink listening on http://{}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink(received.clone())))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")?;
    eprintln!(
        "OTLP sink received {} spans",
        received.load(Ordering::Relaxed)
    );
    Ok(())
}
