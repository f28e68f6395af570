//! Everything the operator can ask the console to do. Keys map to these (see `keymap`); the app
//! turns them into `Control` calls, so key handling is testable without a terminal.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    BoundUp,
    BoundDown,
    AddClients(usize),
    RemoveClients(usize),
    ToggleRamp,
    TogglePause,
    CycleTheme,
    ToggleHelp,
    ScrollUp,
    ScrollDown,
    Quit,
}

/// Config name, action and what the help overlay says about it, in help order.
pub const ALL: &[(&str, Action, &str)] = &[
    ("t_up", Action::BoundUp, "raise T by ui.t_step_ms"),
    ("t_down", Action::BoundDown, "lower T by ui.t_step_ms"),
    ("add_1", Action::AddClients(1), "add 1 client"),
    ("add_10", Action::AddClients(10), "add 10 clients"),
    ("remove_1", Action::RemoveClients(1), "remove 1 client"),
    ("remove_10", Action::RemoveClients(10), "remove 10 clients"),
    ("ramp", Action::ToggleRamp, "start/stop the load ramp"),
    ("pause", Action::TogglePause, "pause/resume the fleet"),
    ("theme", Action::CycleTheme, "next theme"),
    ("help", Action::ToggleHelp, "this help (Esc closes)"),
    ("scroll_up", Action::ScrollUp, "scroll the client table up"),
    ("scroll_down", Action::ScrollDown, "scroll the client table down"),
    ("quit", Action::Quit, "quit (stops the server)"),
];

impl Action {
    pub fn by_name(name: &str) -> Option<Action> {
        ALL.iter().find(|(n, _, _)| *n == name).map(|(_, a, _)| *a)
    }
}
