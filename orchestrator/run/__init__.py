"""A run of the benchmark on the host: resolved once into a plan (`plan`), then carried out
stage by stage (`stages`: prepare -> build -> assign -> relax -> score -> record) into its
run folder (`orchestrator.runfolder`), and scored (`scoring`). After planning, nothing here
reads the manifest."""
