"""``mixedae report``: a pretraining run and its transfer results on one page, beside the paper.

=============  =====================================================================
module         responsibility
=============  =====================================================================
collect        find what a run produced: config, log.jsonl, weights, transfer results
curves         pretraining curves, HomoCon floor, TopK accuracy (Fig. 6a/6b)
attention      rebuild the model; [CLS] attention (Fig. 5/7), a patch's TopK neighbourhood
maps           draw reconstructions and attention maps
transfers      transfer sections beside the paper's rows
document       the report as data; HTML (self-contained) and Markdown renderings
build          assemble everything (``write_report``)
main           the command line
=============  =====================================================================
"""
