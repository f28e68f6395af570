//! The console application: turns key presses into actions and actions into `Control` calls,
//! has the node close a telemetry interval once a second (the console plays the headless loop's
//! part: only one of them runs in a process), and redraws about `ui.fps` times a second from
//! snapshots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent};
use ratatui::backend::Backend;
use ratatui::{Frame, Terminal};

use super::action::Action;
use super::components::{self, View};
use super::config::UiConfig;
use super::keymap::KeyMap;
use super::state::{NodeInfo, UiState};
use super::theme::Theme;
use crate::control::Control;

/// Period of the time-series rows; the chart's x axis counts them as seconds.
const TICK: Duration = Duration::from_secs(1);

pub struct App {
    pub node: NodeInfo,
    pub control: Arc<Control>,
    pub keymap: KeyMap,
    pub theme: Theme,
    pub themes: Vec<String>,
    themes_dir: PathBuf,
    pub t_step_ms: f64,
    pub frame: Duration,
    pub chart_window_s: usize,
    pub help: bool,
    pub scroll: usize,
    pub quit: bool,
    pub log_path: Option<PathBuf>,
    /// Frames drawn so far (the CPU benchmark reports it).
    pub frames: u64,
    last_tick: Instant,
}

impl App {
    /// `theme` overrides `ui.theme` (the `--theme` flag). Problems loading it are events.
    pub fn new(node: NodeInfo, control: Arc<Control>, ui: &UiConfig, theme: Option<&str>) -> App {
        let keymap = KeyMap::from_config(&ui.keys).unwrap_or_else(|e| {
            // Config validation already refuses bad maps; this only guards direct construction.
            control.telemetry.problem(format!("key map invalid ({e}); using the default keys"));
            KeyMap::default()
        });
        let name = theme.unwrap_or(&ui.theme);
        let (theme, why) = Theme::load(&ui.themes_dir, name);
        if let Some(why) = why {
            control.telemetry.problem(why);
        }
        App {
            node,
            control,
            keymap,
            theme,
            themes: Theme::available(&ui.themes_dir),
            themes_dir: ui.themes_dir.clone(),
            t_step_ms: ui.t_step_ms,
            frame: Duration::from_secs(1) / ui.fps.max(1),
            chart_window_s: ui.chart_window_s as usize,
            help: false,
            scroll: 0,
            quit: false,
            log_path: None,
            frames: 0,
            last_tick: Instant::now(),
        }
    }

    pub fn handle_key(&mut self, e: &KeyEvent) {
        if self.help && e.code == KeyCode::Esc {
            self.help = false;
            return;
        }
        if let Some(a) = self.keymap.action(e) {
            self.handle(a);
        }
    }

    pub fn handle(&mut self, a: Action) {
        let tele = &self.control.telemetry;
        match a {
            Action::BoundUp | Action::BoundDown => {
                let step = if a == Action::BoundUp { self.t_step_ms } else { -self.t_step_ms };
                // Refusals are recorded as events by `Control` itself, so the panel shows them.
                let _ = self.control.set_bound_ms(self.control.bound_ms() + step);
            }
            Action::AddClients(_) | Action::RemoveClients(_) | Action::ToggleRamp | Action::TogglePause => {
                let Some(fleet) = self.control.fleet() else {
                    tele.problem("no built-in fleet attached: client keys (add/remove/ramp/pause) do nothing");
                    return;
                };
                // The fleet logs each change as an event itself (headless runs need that too).
                match a {
                    Action::AddClients(n) => fleet.add_clients(n),
                    Action::RemoveClients(n) => fleet.remove_clients(n),
                    Action::ToggleRamp => {
                        fleet.toggle_ramp();
                    }
                    _ => fleet.set_paused(!fleet.snapshot().paused),
                }
            }
            Action::CycleTheme => {
                let next = self.themes.iter().position(|n| *n == self.theme.name).map_or(0, |i| (i + 1) % self.themes.len());
                let (theme, why) = Theme::load(&self.themes_dir, &self.themes[next]);
                if let Some(why) = why {
                    tele.problem(why);
                }
                self.theme = theme;
            }
            Action::ToggleHelp => self.help = !self.help,
            Action::ScrollUp => self.scroll = self.scroll.saturating_sub(10),
            Action::ScrollDown => {
                let n = self.control.fleet().map_or(0, |f| f.snapshot().clients.len());
                self.scroll = (self.scroll + 10).min(n.saturating_sub(1));
            }
            Action::Quit => self.quit = true,
        }
    }

    /// Has `tick` close a telemetry interval when one is due.
    pub fn tick_if_due(&mut self, now: Instant, tick: &mut impl FnMut()) {
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            tick();
        }
    }

    pub fn state(&self) -> UiState {
        UiState::capture(&self.node, &self.control, self.chart_window_s)
    }

    pub fn draw(&self, f: &mut Frame, state: &UiState) {
        let view = View {
            theme: &self.theme,
            keymap: &self.keymap,
            help: self.help,
            scroll: self.scroll,
            t_step_ms: self.t_step_ms,
            chart_window_s: self.chart_window_s,
            log_path: self.log_path.as_deref(),
            themes: &self.themes,
        };
        components::draw(f, state, &view);
    }

    /// The loop: input (via `next_event`, which waits at most the given time), `tick` (the
    /// node's: it closes a telemetry interval) each second, a frame every `self.frame`. Returns
    /// on quit or when `stop()` says so.
    pub fn run<B: Backend>(
        &mut self,
        terminal: &mut Terminal<B>,
        mut next_event: impl FnMut(Duration) -> std::io::Result<Option<Event>>,
        mut tick: impl FnMut(),
        stop: impl Fn() -> bool,
    ) -> std::io::Result<()> {
        let mut next_frame = Instant::now();
        while !self.quit && !stop() {
            let now = Instant::now();
            self.tick_if_due(now, &mut tick);
            if now >= next_frame {
                let state = self.state();
                terminal.draw(|f| self.draw(f, &state))?;
                self.frames += 1;
                // Skip missed frames rather than bursting to catch up.
                next_frame = (next_frame + self.frame).max(now + self.frame / 2);
            }
            match next_event(next_frame.saturating_duration_since(Instant::now()))? {
                Some(Event::Key(k)) => self.handle_key(&k),
                Some(Event::Resize(..)) => next_frame = Instant::now(),
                _ => {}
            }
        }
        Ok(())
    }
}
