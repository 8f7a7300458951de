//! The management API's messages and services, generated from `proto/` at build time.
//! Package paths mirror upstream's (`xray.app.stats.command`), so type URLs match.
#![allow(missing_docs, clippy::all)]

/// `xray.*` packages.
pub mod xray {
    /// `xray.app.*`
    pub mod app {
        /// `xray.app.stats`
        pub mod stats {
            /// `xray.app.stats.command`: StatsService.
            pub mod command {
                tonic::include_proto!("xray.app.stats.command");
            }
        }
    }
}
