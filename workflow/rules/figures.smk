# Tables and figures: cheap local jobs that read JSON/CSV/NPZ only (no model is loaded).


rule aggregate:
    input:
        evals=all_eval_paths(),
    output:
        report(f"{OUT}/tables/main.csv", caption="../report/table_main.rst", category="Tables"),
        [
            report(f"{OUT}/tables/{t}.csv", caption="../report/table_other.rst", category="Tables")
            for t in TABLES
            if t != "main"
        ],
        [f"{OUT}/tables/{t}.md" for t in TABLES],
    params:
        spec=js(aggregate_spec()),
        out_dir=f"{OUT}/tables",
        code=CODE_AGG,
    log:
        f"{OUT}/logs/aggregate.log",
    shell:
        "eroseg aggregate --evals {input.evals} --spec {params.spec:q} --out-dir {params.out_dir} > {log} 2>&1"


rule figures:
    input:
        evals=all_eval_paths(),
        logs=[f"{OUT}/models/{m}/seed{s}/log.csv" for m in METHODS for s in SEEDS],
        samples=samples_path(),
    output:
        [
            report(f"{OUT}/figures/{f}.png", caption=f"../report/{FIGURE_CAPTIONS[f]}.rst", category="Figures")
            for f in FIGURES
        ],
        [f"{OUT}/figures/{f}.svg" for f in FIGURES],
    params:
        spec=js(figure_spec()),
        out_dir=f"{OUT}/figures",
        code=CODE_FIG,
    log:
        f"{OUT}/logs/figures.log",
    shell:
        "MPLBACKEND=Agg eroseg figures --evals {input.evals} --logs {input.logs} --samples {input.samples}"
        " --steps {input.samples} --spec {params.spec:q} --out-dir {params.out_dir} > {log} 2>&1"
