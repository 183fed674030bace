//! Lazy mounts in every mode (fanotify, kernel, fuse), from a registry, local blob
//! directories and S3.
mod fanotify;
mod fetch;
mod modes;
mod s3;
