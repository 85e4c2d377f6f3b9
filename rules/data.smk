# Videos -> JPEG frames with a manifest, one job per data source.


rule demo_videos:
    output:
        directory(layout.demo_videos()),
    log:
        layout.log_path("demo_videos", "demo"),
    localrule: True
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/demo_videos.py"


rule extract_frames:
    input:
        videos=source_videos,
    output:
        # The manifest, not the frames folder: Snakemake deletes a job's outputs before rerunning
        # it, and the extractor skips videos already extracted with the same settings.
        manifest=FRAMES_MANIFEST,
    log:
        layout.log_path("extract_frames", "{source}"),
    params:
        extraction=as_json(PARAMS.data.extraction),
    threads: PARAMS.data.extraction.workers
    resources:
        **job_resources("extract"),
    conda:
        "envs/dropmae.yaml"
    script:
        "../workflow_scripts/extract_frames.py"
