"""DICOM in and out: image series and objects in, DICOM-SEG and RTSTRUCT out and in.

=====================  ==========================================================
module                 holds
=====================  ==========================================================
:mod:`.files`          :func:`~.files.read_dataset`, the one ``pydicom.dcmread``;
                       headers, what each object is, series of a folder, localizers
:mod:`.image`          :func:`~.image.read_dicom_image`: a folder, a file of a series
                       or a multi-frame object as an (x, y, z) Volume
:mod:`.stack`          slice order, gaps, gantry tilt of a stack of slices or frames
:mod:`.stacks`         the image stacks of a series or object (magnitude / phase,
                       echoes, Dixon, time points), their names, ``stack=``
:mod:`.multiframe`     enhanced multi-frame objects, pixel decoding through pydicom
:mod:`.mosaic`         Siemens mosaics de-mosaiced (CSA through nibabel.nicom)
:mod:`.geometry`       the one DICOM geometry: pixel <-> LPS mm, an image plane on a
                       label grid (frame steps), reading the source slices
:mod:`.derived`        what a written SEG / RTSTRUCT references (``DerivedSeries``),
                       its label frames, how label values travel in it
:mod:`.seg`            :func:`~.seg.write_dicom_seg`
:mod:`.rtstruct`       :func:`~.rtstruct.write_rtstruct` (outlines both kinds of
                       readers rasterise back to the same pixels)
:mod:`.labels`         :func:`~.labels.read_dicom_labels`: a SEG / RTSTRUCT as a label
                       map on its reference series
=====================  ==========================================================

LPS <-> RAS goes through :mod:`medseg.io.lps`. Submodules are imported on use
(``medseg.io.read_volume`` and ``medseg.io.labels`` do), so importing this package
costs nothing.
"""
