//! Unit tests of the pure plan.
