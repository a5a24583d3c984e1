//! Benchmarks for Nexa Forge; see `benches/`.
