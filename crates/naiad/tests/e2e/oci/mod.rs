//! OCI images: conversion from registries and layouts, and the registries themselves
//! (their infrastructure in the tests, bearer-token authentication).
mod convert;
mod convert_faults;
mod registry_infra;
mod registry_token;
