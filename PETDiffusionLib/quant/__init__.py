"""Quantification (PHYSICS.md section 2).

- ``lesions``: ``label_lesions`` (18-connectivity), ``segment_lesions`` (SUV 2.5 / 41 % / PERCIST),
  ``lesion_table`` (SUVmax, SUVmean, SUVpeak, MTV, TLG), ``lesion_totals`` (TMTV, TTLG, count).
- ``organs``: ``organ_table`` (SUVmean, SD, median, max, volume), ``liver_reference_check`` (EANM).
- ``metrics``: PSNR, SSIM (3D), RMSE, NMSE, NRMSE, MAE (optionally inside a mask), Dice,
  autoPET false-positive / false-negative volumes.
- ``tables``: ``write_quant_outputs`` -> lesions.csv, organs.csv, summary.json.
"""
