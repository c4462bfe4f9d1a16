//! The pachd client and messages generated from proto/pfs_v2.proto by build.rs.

#![allow(clippy::all, missing_docs)]

pub mod google {
    pub mod protobuf {
        include!(concat!(env!("OUT_DIR"), "/google.protobuf.rs"));
    }
}

pub mod pfs_v2 {
    include!(concat!(env!("OUT_DIR"), "/pfs_v2.rs"));
}
