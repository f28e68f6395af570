//! Console tests without a terminal or a server: a fixed telemetry state rendered into
//! ratatui's `TestBackend`, and key presses checked against the `Control` calls they make.

use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::app::App;
use super::config::UiConfig;
use super::demo::StandInFleet;
use super::state::NodeInfo;
use crate::control::{Control, FleetControl};
use crate::dispatch::{policy::Paper, Dispatcher};
use crate::protocol::{Status, Timings};
use crate::telemetry::{RequestRecord, Telemetry};

fn node() -> NodeInfo {
    NodeInfo {
        addr: "127.0.0.1:7878".into(),
        backend: "tract 0.23 (ort-tract 0.5.0)".into(),
        fallback: false,
        synthetic: true,
        models: vec![("mobilenet_1.0_224".into(), 70.9), ("mobilenet_0.5_160".into(), 59.1), ("mobilenet_0.25_128".into(), 41.5)],
    }
}

/// A node with queue depths 3, 1, 0, a second of traffic on the first two models, and T = 50 ms.
fn control() -> Arc<Control> {
    let d = Arc::new(Dispatcher::new(Box::new(Paper), 3, 0.1, 50.0));
    for (q, us) in [(0, 12_000.0), (1, 4_000.0), (2, 1_000.0)] {
        d.seed(q, us);
    }
    let t = Arc::new(Telemetry::new(vec![70.9, 59.1, 41.5]));
    let ok = |m, us| RequestRecord {
        status: Status::Ok,
        model: Some(m),
        timings: Timings { queue_us: 0, preprocess_us: 0, inference_us: us, total_us: us },
        estimate_us: None,
    };
    for _ in 0..3 {
        t.record(&ok(0, 20_000), 50.0);
    }
    t.record(&ok(1, 6_000), 50.0);
    t.tick(vec![3, 1, 0], 12);
    // Depths as the dispatcher sees them now: 3 requests on queue 0, 1 on queue 1.
    for _ in 0..3 {
        d.assign();
    }
    // Queue 0 would now take 48 ms: over a 20 ms bound, so this one goes to queue 1.
    d.set_bound_ms(20.0);
    d.assign();
    d.set_bound_ms(50.0);
    t.event("T changed 40.0 → 50.0 ms");
    Arc::new(Control::new(d, t))
}

fn fleet(c: &Control, n: usize) -> Arc<StandInFleet> {
    let f = Arc::new(StandInFleet::new(vec![224, 192, 160, 128], 80.0, 150.0));
    f.add_clients(n);
    c.attach_fleet(f.clone());
    f
}

fn app(c: Arc<Control>) -> App {
    App::new(node(), c, &UiConfig::default(), None)
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    let state = app.state();
    term.draw(|f| app.draw(f, &state)).unwrap();
    let buf = term.backend().buffer();
    (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>() + "\n").collect()
}

fn line_with<'a>(s: &'a str, needle: &str) -> &'a str {
    s.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in\n{s}"))
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

#[test]
fn every_panel_shows_the_fixed_state() {
    let c = control();
    fleet(&c, 12);
    let s = screen(&app(c), 120, 40);
    // Header: address, backend, synthetic weights, T and the client thresholds, live figures.
    let head = line_with(&s, "127.0.0.1:7878");
    assert!(head.contains("tract 0.23") && head.contains("synthetic weights"), "{head}");
    let t = line_with(&s, "T 50.0 ms");
    assert!(t.contains("TC_lower 80.0") && t.contains("TC_upper 150.0 ms") && t.contains("clients 12"), "{t}");
    let live = line_with(&s, "req/s");
    assert!(live.contains("accuracy 67.95") && live.contains("SLO 100.0%"), "{live}");
    // Queues in ladder order with their depths; queue 0 is three deep, queue 2 empty.
    let q0 = line_with(&s, "mobilenet_1.0_224");
    assert!(q0.contains("70.9") && q0.contains("  3 ███") && q0.contains("12.00") && q0.contains("75%"), "{q0}");
    assert!(line_with(&s, "mobilenet_0.5_160").contains("  1 █"), "{s}");
    assert!(line_with(&s, "mobilenet_0.25_128").contains("  0 ·"));
    assert!(s.find("mobilenet_1.0_224") < s.find("mobilenet_0.5_160"));
    // Chart legend, clients (histogram labels and counts: ids 1..12 spread over 4 resolutions).
    assert!(s.contains("accuracy over time") && s.contains("accuracy %") && s.contains("clients 0–12"), "{s}");
    assert!(s.lines().any(|l| ["224 ", "192 ", "160 ", "128 "].iter().all(|r| l.contains(r))), "resolution labels:\n{s}");
    assert!(s.contains("███3████ ███3████ ███3████ ███3████"), "3 clients at each resolution:\n{s}");
    assert!(line_with(&s, "last ms").contains("requests"));
    // No labels (a synthetic ladder): no label column.
    assert!(!s.contains("last top-1"), "{s}");
    // Events.
    assert!(s.contains("T changed 40.0 → 50.0 ms"));
}

#[test]
fn no_fleet_and_small_terminal() {
    let s = screen(&app(control()), 80, 24);
    assert!(s.contains("T 50.0 ms") && s.contains("clients - (no fleet)"), "{s}");
    assert!(s.contains("No built-in fleet attached"), "{s}");
    // Narrow: names keep their distinguishing tail.
    assert!(s.contains("…net_1.0_224") || s.contains("mobilenet_1.0_224"), "{s}");
    // Tiny and huge sizes must not panic either.
    screen(&app(control()), 20, 5);
    screen(&app(control()), 250, 80);
}

#[test]
fn t_keys_change_t_and_refusals_reach_the_events_panel() {
    let c = control();
    fleet(&c, 0);
    let mut a = app(c.clone());
    a.handle_key(&KeyEvent::new(KeyCode::Char('+'), KeyModifiers::SHIFT));
    assert_eq!(c.bound_ms(), 55.0);
    a.handle_key(&KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    a.handle_key(&key('-'));
    assert_eq!(c.bound_ms(), 45.0);
    // TC_lower is 80: raising T to 80 must be refused and said so on screen.
    for _ in 0..7 {
        a.handle_key(&KeyEvent::new(KeyCode::Up, KeyModifiers::NONE));
    }
    assert_eq!(c.bound_ms(), 75.0);
    a.handle_key(&key('+'));
    assert_eq!(c.bound_ms(), 75.0);
    let s = screen(&a, 120, 40);
    assert!(s.contains("T change to 80.0 ms refused"), "{s}");
    assert!(line_with(&s, "T 75.0 ms").contains("TC_lower 80.0"));
}

#[test]
fn fleet_keys_drive_the_fleet() {
    let c = control();
    let f = fleet(&c, 0);
    let mut a = app(c.clone());
    a.handle_key(&key('a'));
    a.handle_key(&KeyEvent::new(KeyCode::Char('A'), KeyModifiers::SHIFT));
    assert_eq!(f.snapshot().clients.len(), 11);
    a.handle_key(&key('x'));
    assert_eq!(f.snapshot().clients.len(), 10);
    a.handle_key(&key('X'));
    assert_eq!(f.snapshot().clients.len(), 0);
    a.handle_key(&key('r'));
    assert!(f.snapshot().ramp.unwrap().running);
    a.handle_key(&key('p'));
    assert!(f.snapshot().paused);
    a.handle_key(&key('p'));
    assert!(!f.snapshot().paused);
}

#[test]
fn fleet_keys_without_a_fleet_say_so() {
    let c = control();
    let mut a = app(c.clone());
    a.handle_key(&key('a'));
    assert!(c.telemetry.events().last().unwrap().text.contains("no built-in fleet"));
    assert!(screen(&a, 100, 30).contains("no built-in fleet attached"));
}

#[test]
fn theme_help_and_quit_keys() {
    let mut a = app(control());
    assert_eq!(a.theme.name, "dark");
    a.handle_key(&key('t'));
    assert_eq!(a.theme.name, "high-contrast");
    a.handle_key(&key('?'));
    let s = screen(&a, 100, 30);
    for want in ["add 10 clients", "start/stop the load ramp", "Ctrl-c q", "+ = ↑", "log file", "light"] {
        assert!(s.contains(want), "help lacks {want:?}:\n{s}");
    }
    a.handle_key(&KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert!(!a.help);
    assert!(!a.quit);
    a.handle_key(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(a.quit);
}

#[test]
fn theme_flag_with_unknown_name_falls_back_with_an_event() {
    let c = control();
    let a = App::new(node(), c.clone(), &UiConfig::default(), Some("solarized"));
    assert_eq!(a.theme.name, "dark");
    assert!(c.telemetry.events().last().unwrap().text.contains("theme \"solarized\" not found"));
}

#[test]
fn pretrained_ladder_shows_each_clients_last_label() {
    let c = control();
    let f = fleet(&c, 3);
    f.set_label(2, "tabby cat");
    let mut n = node();
    n.synthetic = false;
    let s = screen(&App::new(n, c, &UiConfig::default(), None), 120, 40);
    assert!(line_with(&s, "127.0.0.1:7878").contains("pretrained weights"), "{s}");
    assert!(line_with(&s, "last ms").contains("last top-1"), "{s}");
    let row = |id: &str| s.lines().find(|l| l.starts_with(&format!("│{id} "))).unwrap_or_else(|| panic!("no row {id} in\n{s}")).to_string();
    assert!(row("2").contains("tabby cat"), "{s}");
    assert!(!row("1").contains("tabby") && row("1").contains(" - "), "{s}");
}

#[test]
fn client_table_scrolls() {
    let c = control();
    fleet(&c, 200);
    let mut a = app(c);
    // The first row under the table header is the first client shown.
    let first_row = |s: &str| s.lines().skip_while(|l| !l.contains("last ms")).nth(1).unwrap().to_string();
    assert!(first_row(&screen(&a, 120, 40)).starts_with("│1 "));
    for _ in 0..5 {
        a.handle_key(&KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE));
    }
    assert_eq!(a.scroll, 50);
    assert!(first_row(&screen(&a, 120, 40)).starts_with("│51 "));
    a.handle_key(&KeyEvent::new(KeyCode::Char('k'), KeyModifiers::NONE));
    assert!(first_row(&screen(&a, 120, 40)).starts_with("│41 "));
}

#[test]
fn event_colours_follow_the_kind_not_the_words() {
    let c = control();
    // An ordinary event whose words used to read as a problem, and a problem worded plainly.
    c.telemetry.event("fleet → 127.0.0.1:7878: the error-free uplink is off");
    c.telemetry.problem("T change to 80.0 ms declined");
    let a = app(c);
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let state = a.state();
    term.draw(|f| a.draw(f, &state)).unwrap();
    let buf = term.backend().buffer();
    // The colour of the first character of the line's text (after the time column).
    let colour_of = |needle: &str| {
        let (x, y) = (0..40u16)
            .find_map(|y| {
                let line: String = (0..120u16).map(|x| buf[(x, y)].symbol().to_string()).collect();
                let at = line.find(needle)?;
                Some((line[..at].chars().count() as u16, y))
            })
            .unwrap_or_else(|| panic!("{needle:?} not on screen"));
        buf[(x, y)].fg
    };
    assert_eq!(colour_of("fleet → 127.0.0.1"), a.theme.foreground, "an info event is not a warning, whatever its words");
    assert_eq!(colour_of("T change to 80.0 ms declined"), a.theme.warn, "a problem is a warning, whatever its words");
    assert_ne!(a.theme.foreground, a.theme.warn);
}
