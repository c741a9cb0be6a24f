"""Stage 6: certificates: their schema (``schema``), the output folder (``store``) and the report (``report``)."""
