"""Reports: ``pdf.make_report`` (report.pdf, report.json, CSV tables), ``dicom_seg.write_dicom_seg``
(DICOM SEG of lesion/organ label maps) and ``dicom_sr.write_lesion_sr`` (TID 1500 measurements)."""
