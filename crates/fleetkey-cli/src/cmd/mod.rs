//! One module per subcommand.

pub(crate) mod audit;
pub(crate) mod bench;
pub(crate) mod can;
pub(crate) mod ctx;
#[cfg(feature = "sim")]
pub(crate) mod demo;
pub(crate) mod derive;
pub(crate) mod device;
pub(crate) mod generation;
pub(crate) mod governance;
pub(crate) mod init;
pub(crate) mod lifecycle;
pub(crate) mod master;
pub(crate) mod policy;
pub(crate) mod roll;
pub(crate) mod serve;
pub(crate) mod she;
#[cfg(feature = "sim")]
pub(crate) mod sim;
pub(crate) mod token;
pub(crate) mod token_backup;
