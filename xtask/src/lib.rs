//! Build tasks shared by the `xtask` binary and the host integration tests.
