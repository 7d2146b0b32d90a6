"""What a person reads of an output: the dataset card (``card``), the evaluation report (``evaluation``) and the
static HTML viewer of a build (``viewer``, ``viewer_data``, ``static/``). The build, the viewer job, the evaluation
and the Hub push write them."""
