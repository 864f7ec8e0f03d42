//! Ingest through the exactly-once write path (binary COPY → keys → events → rollups)
//! against a real PostgreSQL: `DATABASE_URL` or a throwaway cluster (see
//! `tally-testdb`). Sustained 10M-event runs are `tally-load`'s job
//! (docs/performance.md); this bench measures one writer writing batches of 50 000, each
//! a slice of a 10M-event workload (as dense in time as the load runs).

use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tally_benches::{Shape, generate_slice, test_mode};
use tally_testdb::TestDb;

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = match rt.block_on(TestDb::new()) {
        Ok(db) => db,
        Err(e) => panic!("the ingest bench needs PostgreSQL: {e}"),
    };
    let batch = if test_mode() { 500 } else { 50_000 };
    let mut group = c.benchmark_group("write_batch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for shape in [Shape::Live, Shape::Backfill] {
        group.throughput(Throughput::Elements(batch as u64));
        let name = format!("{shape:?}").to_lowercase();
        group.bench_with_input(BenchmarkId::new(name, batch), &shape, |b, shape| {
            let mut seed = 1;
            b.to_async(&rt).iter_custom(|iters| {
                let store = db.tally().clone();
                let shape = *shape;
                seed += 1;
                let s = seed;
                async move {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        // Fresh ids every iteration: generation is outside the timing.
                        let events =
                            generate_slice(batch, 10_000_000, shape, Utc::now(), s * 1000 + i);
                        let t = Instant::now();
                        store.write(&events).await.unwrap();
                        total += t.elapsed();
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
