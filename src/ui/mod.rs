//! The operator console's library: a ratatui dashboard over a live node and its built-in fleet,
//! drawn from snapshots and driven through [`Control`](crate::control::Control). The front end
//! that launches it is `cmd::console`.

pub mod action;
pub mod app;
pub mod components;
pub mod config;
pub mod demo;
pub mod keymap;
pub mod state;
pub mod theme;
pub mod tui;

#[cfg(test)]
mod tests;
