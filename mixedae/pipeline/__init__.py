"""``mixedae pipeline``: pretraining, conversion, transfers and the report as resumable stages.

==========  ==================================================================
module      responsibility
==========  ==================================================================
main        the command line: flags, validation before any work, the run loop
plan        the stages and their command lines (torchrun / dist_train.sh for N GPUs)
stages      running a stage: subprocess into its log, markers, skip / redo rules
==========  ==================================================================
"""
