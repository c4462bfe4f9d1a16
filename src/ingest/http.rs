//! The HTTP API. (Being written.)
