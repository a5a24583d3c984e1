//! The test suite every [`Store`](crate::Store) implementation must pass.
