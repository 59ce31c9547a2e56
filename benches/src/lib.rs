//! Benchmarks live in `benches/benches/` (criterion) and `benches/scripts/` (end to end).
