//! A gateway recording its requests through a `Recorder`.
//!
//! ```text
//! reqlog serve &                                   # 127.0.0.1:50051
//! cargo run -p reqlog-client --example gateway
//! reqlog logs acct_demo
//! ```
//!
//! With the `tower` feature, `RecorderLayer` does the same for every request an axum or
//! hyper service answers: `Router::new().route(..).layer(RecorderLayer::new(recorder))`.

use std::time::{Duration, Instant};

use reqlog_client::{Overflow, Recorder, RecorderConfig, ReqlogClient, pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("REQLOG_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    // Lazy: the gateway starts (and records into its buffer) even while reqlog is down.
    let client = ReqlogClient::builder(server)
        .token(std::env::var("REQLOG_TOKEN").unwrap_or_default())
        .connect_lazy()?;
    let recorder = Recorder::new(
        client,
        RecorderConfig::default()
            .max_batch(200)
            .max_delay(Duration::from_millis(100))
            .overflow(Overflow::Drop),
    );

    for n in 0..1_000u32 {
        let started = Instant::now();
        // ... the gateway proxies the request here ...
        let status = if n % 10 == 0 { 429 } else { 200 };
        // Never waits for the network: the record goes into the buffer.
        let _ = recorder.try_record(pb::RequestRecord {
            account_id: "acct_demo".into(),
            api_key_id: format!("key_{}", n % 3),
            api_key_name: format!("Demo key {}", n % 3),
            api_key_prefix: format!("bye_DEMO{}", n % 3),
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            query_string: "stream=true".into(),
            status_code: status,
            error_code: if status == 429 {
                "BSE1001".into()
            } else {
                String::new()
            },
            client_ip: format!("203.0.113.{}", n % 250),
            user_agent: "demo-gateway/1.0".into(),
            duration_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        });
    }

    // At exit: deliver what is still buffered.
    recorder.shutdown().await;
    println!("{:?}", recorder.stats());
    Ok(())
}
