"""The Gradio app: runs, the comparison grid, prompt diffs, calibration, live tries, downloads, shadow.

`create_ui()` builds the Blocks (mounted at /ui by ui.service, or `launch_ui()` standalone);
everything it shows is computed by ui.views. gradio is imported inside functions only, so
importing this module (and `foster --help`) stays fast.

Deep link: /ui/?tab=compare&run=<run id> opens a tab with a run selected.
"""


from typing import Any

TABS = ("runs", "compare", "diff", "calibration", "try", "download", "shadow")


def mount_options() -> dict[str, Any]:
    """Options for gr.mount_gradio_app / Blocks.launch (Gradio 6 takes theme and css there)."""
    import gradio as gr

    from foster.ui.views import DIFF_CSS, GRID_CSS

    return {"theme": gr.themes.Soft(), "css": GRID_CSS + DIFF_CSS, "ssr_mode": False}


def _copy_upload(path: str | None) -> str | None:
    """An uploaded inputs file, copied out of Gradio's cache so the run still finds it later."""
    import shutil
    import uuid
    from pathlib import Path

    from foster.store.paths import foster_home

    if not path:
        return None
    uploads = foster_home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    dst = uploads / f"{uuid.uuid4().hex[:8]}-{Path(path).name}"
    shutil.copyfile(path, dst)
    return str(dst)


def create_ui():
    """Build the app (does not read any run until a page loads)."""
    import gradio as gr

    from foster.ui import shadow_view, views

    def run_dropdown(label: str = "Run") -> Any:
        return gr.Dropdown(label=label, choices=[], value=None, allow_custom_value=True, scale=3)

    with gr.Blocks(title="foster", analytics_enabled=False) as demo:
        gr.Markdown("# foster\nAdopt an orphaned fine-tune: how faithfully does each bundle reproduce the teacher?")
        with gr.Tabs() as tabs:
            # --- Runs ---------------------------------------------------------------------------
            with gr.Tab("Runs", id="runs") as runs_tab:
                with gr.Accordion("Start a run", open=False):
                    with gr.Row():
                        teacher = gr.Textbox(label="Teacher (litellm model string)", placeholder="openai/ft:gpt-4o-mini:acme::abc123")
                        targets = gr.Textbox(label="Targets (comma-separated)", value="local/smollm2-135m-instruct")
                    with gr.Row():
                        inputs_file = gr.File(label="Historical inputs (JSONL, optional)", file_types=[".jsonl"], type="filepath")
                        with gr.Column():
                            threshold = gr.Slider(0.05, 1.0, value=0.9, step=0.01, label="Fidelity threshold")
                            # the run's own defaults, so the form never caps a history the CLI would keep whole
                            max_probes = gr.Number(label="Max probes", value=views.RUN_DEFAULTS["max_probes"], precision=0)
                            primary_metric = gr.Dropdown(label="Primary metric (free-text teachers)",
                                                         choices=views.PRIMARY_METRICS, value="auto")
                            task = gr.Textbox(label="Task (one line, optional)")
                    start = gr.Button("Start run", variant="primary")
                    start_msg = gr.Markdown()
                with gr.Row():
                    runs_run = run_dropdown()
                    refresh = gr.Button("Refresh", scale=1)
                progress = gr.HTML()
                events = gr.Textbox(label="Recent events", lines=10, max_lines=20, interactive=False, elem_classes=["foster-events"])
                timer = gr.Timer(2.0, active=False)  # ticks only while the Runs tab is open

            # --- Compare ------------------------------------------------------------------------
            with gr.Tab("Compare", id="compare") as compare_tab:
                with gr.Row():
                    compare_run = run_dropdown()
                    which = gr.Radio(list(views.FILTERS), value="All", label="Show", scale=2)
                gr.Markdown(views.FILTER_HELP)
                summary = gr.Dataframe(headers=views.SUMMARY_HEADERS, label="Per column", interactive=False, wrap=True)
                grid = gr.HTML(elem_id="foster-grid")

            # --- Diff ---------------------------------------------------------------------------
            with gr.Tab("Diff", id="diff") as diff_tab:
                diff_run = run_dropdown()
                with gr.Row():
                    diff_a = gr.Dropdown(label="Bundle A", choices=[], allow_custom_value=True)
                    diff_b = gr.Dropdown(label="Bundle B", choices=[], allow_custom_value=True)
                diff = gr.HTML()

            # --- Calibration --------------------------------------------------------------------
            with gr.Tab("Calibration", id="calibration") as calibration_tab:
                cal_run = run_dropdown()
                gr.Markdown("Answer distributions aggregated over the held-out probes: the teacher's samples against "
                            "each variant's (sampled where evaluation sampled it, else its greedy answers).")
                calibration = gr.BarPlot(x="source", y="p", color="answer", y_title="share of answers", x_title="",
                                         label="Teacher vs target answer distributions", height=420)
                calibration_legend = gr.HTML()
                gr.Markdown("### Divergence clusters")
                cluster_map = gr.HTML()

            # --- Try ----------------------------------------------------------------------------
            with gr.Tab("Try", id="try") as try_tab:
                try_run = run_dropdown()
                try_text = gr.Textbox(label="Input", placeholder="Type any input: the teacher and every variant answer it")
                try_go = gr.Button("Ask", variant="primary")
                try_out = gr.Dataframe(headers=["variant", "model", "answer", "agrees with teacher"], interactive=False, wrap=True)

            # --- Download -----------------------------------------------------------------------
            with gr.Tab("Download", id="download") as download_tab:
                dl_bundle = gr.Dropdown(label="Bundle", choices=[], allow_custom_value=True)
                dl_files = gr.File(label="Bundle files (JSON + Markdown)", file_count="multiple", interactive=False)

            # --- Shadow -------------------------------------------------------------------------
            with gr.Tab("Shadow", id="shadow") as shadow_tab:
                with gr.Row():
                    shadow_name = gr.Dropdown(label="Deployment", choices=[], allow_custom_value=True, scale=3)
                    shadow_refresh = gr.Button("Refresh", scale=1)
                shadow_summary = gr.HTML()
                shadow_clusters = gr.Dataframe(headers=shadow_view.CLUSTER_HEADERS, label="Agreement per input cluster "
                                               "(the run's clusters, nearest centroid)", interactive=False, wrap=True)
                shadow_rows = gr.Dataframe(headers=views.DIVERGENCE_HEADERS, label="Divergences (both answers)",
                                           interactive=False, wrap=True)

        run_selectors = [runs_run, compare_run, diff_run, cal_run, try_run]

        # --- wiring -------------------------------------------------------------------------------
        def on_load(request: gr.Request):
            params = dict(request.query_params) if request is not None else {}
            choices = views.run_choices()
            ids = [value for _, value in choices]
            wanted = params.get("run")
            latest = views.latest_run()
            with_grid = views.latest_run(with_grid=True)
            run_all = wanted if wanted in ids else latest
            run_grid = wanted if wanted in ids else (with_grid or latest)
            tab = params.get("tab") if params.get("tab") in TABS else "runs"
            bundles = views.run_bundle_choices(None)
            deployments = views.deployment_choices()
            return (
                gr.Tabs(selected=tab),
                gr.Timer(active=tab == "runs"),
                gr.Dropdown(choices=choices, value=run_all),
                gr.Dropdown(choices=choices, value=run_grid),
                gr.Dropdown(choices=choices, value=run_grid),
                # the map embeds every probe: computed when its tab is opened, not on every page load
                gr.Dropdown(choices=choices, value=run_grid if tab == "calibration" else None),
                gr.Dropdown(choices=choices, value=run_grid),
                gr.Dropdown(choices=bundles, value=bundles[0][1] if bundles else None),
                gr.Dropdown(choices=deployments, value=deployments[0] if deployments else None),
            )

        demo.load(on_load, None, [tabs, timer, *run_selectors, dl_bundle, shadow_name], api_name=False)
        runs_tab.select(lambda: gr.Timer(active=True), None, timer, api_name=False)

        def open_calibration(run_id):
            return gr.Dropdown() if run_id else gr.Dropdown(value=views.latest_run(with_grid=True) or views.latest_run())

        calibration_tab.select(open_calibration, cal_run, cal_run, api_name=False)
        for other in (compare_tab, diff_tab, calibration_tab, try_tab, download_tab, shadow_tab):
            other.select(lambda: gr.Timer(active=False), None, timer, api_name=False)

        def watch(run_id):
            return views.progress_html(run_id), views.recent_events(run_id)

        runs_run.change(watch, runs_run, [progress, events], api_name="watch_run")
        refresh.click(watch, runs_run, [progress, events], api_name=False)
        timer.tick(watch, runs_run, [progress, events], api_name=False, show_progress="hidden")

        def start_clicked(teacher_v, targets_v, file_v, threshold_v, max_probes_v, task_v, primary_v="auto"):
            run_id, message = views.start_run(teacher_v, targets_v, _copy_upload(file_v), threshold_v, task_v, max_probes_v,
                                              primary_v)
            choices = views.run_choices()
            return message, gr.Dropdown(choices=choices, value=run_id) if run_id else gr.Dropdown(choices=choices)

        start.click(start_clicked, [teacher, targets, inputs_file, threshold, max_probes, task, primary_metric],
                    [start_msg, runs_run],
                    api_name="start_run")

        def load_grid(run_id, which_v):
            return views.grid_html(run_id, which_v or "All"), views.summary_rows(run_id)

        compare_run.change(load_grid, [compare_run, which], [grid, summary], api_name="load_grid")
        which.change(load_grid, [compare_run, which], [grid, summary], api_name=False)

        def diff_choices(run_id):
            choices = views.run_bundle_choices(run_id)
            a, b = views.default_diff_pair(run_id)
            return gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b)

        diff_run.change(diff_choices, diff_run, [diff_a, diff_b], api_name=False)
        diff_a.change(views.diff_html, [diff_a, diff_b], diff, api_name=False)
        diff_b.change(views.diff_html, [diff_a, diff_b], diff, api_name="diff_bundles")

        def calibration_view(run_id):
            frame = views.calibration_frame(run_id)
            order = list(dict.fromkeys(frame["source"])) if len(frame) else None  # the teacher's bar first
            colours = views.calibration_colours(frame)
            return gr.BarPlot(value=frame, sort=order, color_map=colours), views.colour_legend(colours)

        # two events: the map embeds the probes (the first embedding load takes seconds), the bars do not
        cal_run.change(calibration_view, cal_run, [calibration, calibration_legend], api_name="calibration")
        cal_run.change(views.cluster_map_svg, cal_run, cluster_map, api_name="cluster_map")

        try_go.click(views.try_rows, [try_run, try_text], try_out, api_name="try_input")
        try_text.submit(views.try_rows, [try_run, try_text], try_out, api_name=False)

        dl_bundle.change(views.bundle_download, dl_bundle, dl_files, api_name="download_bundle")

        shadow_name.change(views.divergence_rows, shadow_name, shadow_rows, api_name="divergences")
        shadow_refresh.click(views.divergence_rows, shadow_name, shadow_rows, api_name=False)

        def shadow_figures(name):
            return shadow_view.summary_html(name), shadow_view.cluster_rows(name)

        shadow_name.change(shadow_figures, shadow_name, [shadow_summary, shadow_clusters], api_name="shadow")
        shadow_refresh.click(shadow_figures, shadow_name, [shadow_summary, shadow_clusters], api_name=False)
    return demo


def launch_ui(host: str = "127.0.0.1", port: int = 7860, **launch_kwargs: Any) -> None:
    """Run the app alone (`foster ui`), without the API."""
    demo = create_ui()
    options = mount_options()
    demo.launch(server_name=host, server_port=port, theme=options["theme"], css=options["css"],
                ssr_mode=False, **launch_kwargs)


def add_ui_arguments(parser) -> None:
    """`foster ui` options (an argparse parser or sub-parser)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--models-file", "--models", dest="models", metavar="YAML",
                        help="models file: deployments per model name (rpm, weights, fallbacks)")


def run_ui(args) -> int:
    """Start `foster ui` from parsed arguments."""
    from foster.agent.gateway import Models, use_models
    from foster.agent.worker import Worker, serve_runs_in_process

    if serve_runs_in_process():  # runs started from the page are queued: execute them here, as `foster serve` does
        Worker().start_thread()
    with use_models(Models.load(args.models) if getattr(args, "models", None) else None):
        launch_ui(args.host, args.port)
    return 0
