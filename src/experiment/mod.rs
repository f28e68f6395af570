//! `edgeinfer experiment`: scripted scenarios that reproduce the paper's figures and compare
//! policies against the optimum.

pub mod optimum;
