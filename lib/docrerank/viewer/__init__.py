"""The viewer job: a static HTML viewer of a dataset build (the site is written by ``docrerank.report.viewer``)."""
