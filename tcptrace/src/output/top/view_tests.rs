use ratatui::{
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    Terminal,
};

use super::*;
use crate::{
    host::clock::Clock,
    model::cause::CloseCause,
    output::top::model::{tests as recorded, GroupKind, TopModel},
    state::alert::Alert,
};

const S: u64 = 1_000_000_000;

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn typed(view: &mut ViewState, keys: &str) {
    for c in keys.chars() {
        view.handle_key(key(KeyCode::Char(c)));
    }
}

/// A model fed with recorded events: a busy database destination with retransmits, a quiet
/// web destination, a local service, a keepalive timeout and a reset.
fn busy_model() -> TopModel {
    let mut top = TopModel::started_at(0);
    let db = recorded::addrs("10.0.0.1:0", "10.0.0.9:5432");
    for i in 0..30 {
        recorded::connection(&mut top, i, db, 100 * S + i * S / 4, 3_000_000);
    }
    let web = recorded::addrs("10.0.0.1:0", "93.184.216.34:443");
    for i in 100..104 {
        recorded::connection(&mut top, i, web, 101 * S, 40_000_000);
    }
    top.retransmit(&recorded::retransmit_of(1, db));
    top.retransmit(&recorded::retransmit_of(2, db));
    let mut ka = recorded::flow_with(CloseCause::KeepaliveTimeout, db);
    ka.ts_ns = 105 * S;
    ka.evidence.probes = 3;
    top.flow_end(&ka, false);
    top.alert(&Alert::Closed(&ka));
    let mut reset = recorded::flow_with(CloseCause::ResetReceived, web);
    reset.ts_ns = 106 * S;
    reset.vitals = Some(crate::model::vitals::FlowVitals {
        srtt_ns: Some(91_000_000),
        ..Default::default()
    });
    reset.drops.add("NETFILTER_DROP", 3);
    top.flow_end(&reset, false);
    top.alert(&Alert::Closed(&reset));
    let listener = recorded::addrs("0.0.0.0:8080", "0.0.0.0:0");
    top.transition(&recorded::transition(900, 7, 10, None, listener, 100 * S));
    let accepted = recorded::addrs("10.0.0.1:8080", "10.0.0.7:40000");
    top.transition(&recorded::transition(901, 10, 3, None, accepted, 102 * S));
    let mut now = recorded::counters();
    now.stats[tcptrace_common::stat::STATE_EVENTS as usize] = 800;
    top.tick(recorded::counters(), 107 * S, (0, 0));
    top.tick(now, 108 * S, (12, 3));
    top
}

/// The screen as text, one string per line.
fn render(top: &TopModel, view: &ViewState, width: u16, height: u16) -> Vec<String> {
    let clock = Clock::fixed(0);
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    let snapshot = Snapshot {
        now_ns: 108 * S,
        clock: &clock,
        header: &top.header,
        rows: view.arrange(top.rows(view.kind, 108 * S, std::iter::empty())),
        alerts: top.alerts().collect(),
        filters: Some("remote port 5432,443"),
    };
    terminal
        .draw(|frame| draw(frame, view, &snapshot))
        .expect("draws");
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect()
}

fn line_with<'a>(screen: &'a [String], needle: &str) -> (usize, &'a str) {
    screen
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .map(|(i, l)| (i, l.as_str()))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", screen.join("\n")))
}

#[test]
fn the_screen_fits_80_by_24_with_header_table_alerts_and_keys() {
    let top = busy_model();
    let view = ViewState::default();
    let screen = render(&top, &view, 80, 24);
    let text = screen.join("\n");
    let (_, first) = line_with(&screen, "tcptrace top");
    assert!(first.contains("transitions/s 800"), "{text}");
    let (_, open) = line_with(&screen, "open:");
    assert!(open.contains("ESTAB") || open.contains("none"), "{text}");
    let (_, tw) = line_with(&screen, "TIME_WAIT 12 (3 skipped");
    assert!(tw.contains("only remote port 5432,443"), "{text}");
    let (header_at, titles) = line_with(&screen, "DESTINATION");
    for title in [
        "CONN/s▼",
        "OPEN",
        "TW",
        "FCST%",
        "RTX",
        "RST",
        "KA_TO",
        "EADDR",
        "P99",
    ] {
        assert!(titles.contains(title), "{title} in {titles:?}");
    }
    // Sorted by connections per second: the database first.
    let (db_at, db) = line_with(&screen, "10.0.0.9:5432");
    let (web_at, web) = line_with(&screen, "93.184.216.34:443");
    assert!(header_at < db_at && db_at < web_at, "{text}");
    let cells: Vec<&str> = db.split_whitespace().collect();
    // CONN/s OPEN TW FCST% RTX RST KA_TO EADDR P99
    assert_eq!(
        cells[1..],
        ["3.0", "30", "0", "-", "2", "0", "1", "0", "3.0ms"],
        "{db}"
    );
    assert!(web.contains("40ms"), "{web}");
    // Alerts, newest first.
    let (alerts_at, _) = line_with(&screen, "alerts, newest first: 2");
    let (reset_at, _) = line_with(&screen, "reset_received");
    let (ka_at, ka) = line_with(&screen, "keepalive_timeout");
    assert!(alerts_at < reset_at && reset_at < ka_at, "{text}");
    assert!(ka.contains("10.0.0.1:0 > 10.0.0.9:5432"), "{ka}");
    // What was found comes first on the alert's second line, before the flow's history.
    let found = &screen[ka_at + 1];
    assert!(found.starts_with("  peer silent"), "{text}");
    assert!(found.contains("3 probes unanswered"), "{found}");
    assert!(screen[23].starts_with("q quit"), "{text}");
    assert!(screen.iter().all(|l| l.chars().count() == 80));
}

#[test]
fn keys_sort_filter_toggle_and_quit() {
    let top = busy_model();
    let mut view = ViewState::default();
    // 1: by destination, A→Z; again: Z→A.
    assert_eq!(view.handle_key(key(KeyCode::Char('1'))), KeyOutcome::Redraw);
    assert_eq!((view.sort, view.descending), (Column::Endpoint, false));
    let screen = render(&top, &view, 80, 24);
    assert!(line_with(&screen, "10.0.0.9:5432").0 < line_with(&screen, "93.184.216.34").0);
    view.handle_key(key(KeyCode::Char('1')));
    assert!(view.descending);
    // 0: p99 connect time (the tenth column), slowest first: the web destination.
    view.handle_key(key(KeyCode::Char('0')));
    let screen = render(&top, &view, 80, 24);
    assert!(line_with(&screen, "P99▼").1.contains("DESTINATION"));
    assert!(line_with(&screen, "93.184.216.34").0 < line_with(&screen, "10.0.0.9:5432").0);
    view.handle_key(key(KeyCode::Char('r')));
    assert!(!view.descending);
    // '/' then typing filters by endpoint; Enter keeps it, Esc clears it.
    view.handle_key(key(KeyCode::Char('/')));
    typed(&mut view, "5432q");
    assert_eq!(view.filter, "5432q", "q is text while typing a filter");
    view.handle_key(key(KeyCode::Backspace));
    view.handle_key(key(KeyCode::Enter));
    let screen = render(&top, &view, 80, 24);
    assert!(line_with(&screen, "destinations: 1")
        .1
        .contains("destinations"));
    // The table no longer lists the web destination (the alerts pane is not filtered).
    let (alerts_at, _) = line_with(&screen, "alerts, newest first");
    assert!(!screen[..alerts_at].join("\n").contains("93.184.216.34"));
    assert!(screen[23].contains("[filter: 5432]"));
    view.handle_key(key(KeyCode::Esc));
    assert!(view.filter.is_empty());
    // t: local services (then workloads, then destinations again).
    let mut cycle = view.clone();
    for kind in [
        GroupKind::Service,
        GroupKind::Workload,
        GroupKind::Destination,
    ] {
        cycle.handle_key(key(KeyCode::Char('t')));
        assert_eq!(cycle.kind, kind);
    }
    view.handle_key(key(KeyCode::Char('t')));
    assert_eq!(view.kind, GroupKind::Service);
    let screen = render(&top, &view, 80, 24);
    let (_, service) = line_with(&screen, "10.0.0.1:8080");
    assert!(line_with(&screen, "LOCAL SERVICE").0 > 0);
    assert_eq!(service.split_whitespace().nth(2), Some("1"), "{service}");
    // Ctrl-C and q quit; unknown keys are ignored.
    assert_eq!(view.handle_key(key(KeyCode::F(5))), KeyOutcome::Ignored);
    assert_eq!(view.handle_key(key(KeyCode::Char('q'))), KeyOutcome::Quit);
    assert_eq!(
        view.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        KeyOutcome::Quit
    );
}

#[test]
fn a_larger_terminal_shows_more_and_a_tiny_one_does_not_panic() {
    let top = busy_model();
    let view = ViewState::default();
    let wide = render(&top, &view, 160, 50);
    assert!(line_with(&wide, "10.0.0.9:5432").1.contains("3.0ms"));
    // RTT and drops follow on a wide screen: the median RTT at close, the packets dropped.
    let titles = line_with(&wide, "DESTINATION").1;
    assert!(
        titles.contains("RTT50") && titles.contains("DROP"),
        "{titles}"
    );
    let web = line_with(&wide, "93.184.216.34:443").1;
    assert!(
        web.contains("91ms") && web.trim_end().ends_with(" 3"),
        "{web}"
    );
    let narrow = render(&top, &view, 80, 24);
    assert!(!line_with(&narrow, "DESTINATION").1.contains("RTT50"));
    for (w, h) in [(20, 5), (1, 1), (80, 10)] {
        render(&top, &view, w, h);
    }
}

/// Every column a key sorts by shows its arrow at 80 columns, and keys sort only by the
/// columns the screen shows.
#[test]
fn every_sorted_column_shows_its_arrow_and_hidden_ones_do_not_sort() {
    let top = busy_model();
    let mut view = ViewState::default();
    view.fit_width(80);
    assert_eq!(view.shown, 10, "ten columns fit 80");
    for (key_char, title) in [
        ('5', "FCST%▼"),
        ('8', "KA_TO▼"),
        ('9', "EADDR▼"),
        ('0', "P99▼"),
    ] {
        view.handle_key(key(KeyCode::Char(key_char)));
        let screen = render(&top, &view, 80, 24);
        assert!(
            line_with(&screen, "DESTINATION").1.contains(title),
            "{title}:\n{}",
            screen.join("\n")
        );
    }
    // RTT50 and DROP are not on an 80-column screen: '>' cycles through what is.
    view.handle_key(key(KeyCode::Char('1')));
    for _ in 0..12 {
        view.handle_key(key(KeyCode::Char('>')));
        assert!(
            !matches!(view.sort, Column::Rtt | Column::Drops),
            "{:?}",
            view.sort
        );
    }
    // On a wide screen they are, and a sort by them goes back to CONN/s when it narrows.
    view.fit_width(160);
    assert_eq!(view.shown, Column::ALL.len());
    view.handle_key(key(KeyCode::Char('1')));
    view.handle_key(key(KeyCode::Char('<')));
    assert_eq!(view.sort, Column::Drops);
    view.fit_width(80);
    assert_eq!(view.sort, Column::ConnPerS);
    // The forecast has a header line of its own.
    let screen = render(&top, &view, 80, 24);
    assert!(
        screen[3].starts_with("busiest forecast"),
        "{}",
        screen.join("\n")
    );
}

/// `?` (or `h`) opens a legend of every column; any key closes it.
#[test]
fn the_legend_says_what_each_column_means() {
    let top = busy_model();
    let mut view = ViewState::default();
    assert_eq!(view.handle_key(key(KeyCode::Char('?'))), KeyOutcome::Redraw);
    let screen = render(&top, &view, 100, 30);
    let text = screen.join("\n");
    for needle in [
        "FCST%",
        "4-tuple exhaustion forecast",
        "KA_TO",
        "unanswered keepalive probes",
        "EADDR",
        "EADDRNOTAVAIL",
        "t cycles: destinations -> local services -> workloads",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
    view.handle_key(key(KeyCode::Char('t')));
    assert!(!view.legend, "any key closes it");
    assert_eq!(
        view.kind,
        GroupKind::Destination,
        "the closing key does nothing else"
    );
    view.handle_key(key(KeyCode::Char('t')));
    view.handle_key(key(KeyCode::Char('h')));
    let screen = render(&top, &view, 100, 30);
    let text = screen.join("\n");
    assert!(
        text.contains("ACCQ") && text.contains("accept queue"),
        "{text}"
    );
    assert!(text.contains("DRP/s"), "{text}");
}
