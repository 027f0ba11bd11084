"""ctest entry for the in-Slicer self-test: runs HILASegmentTest from HILASegment.py inside Slicer.

Run by hand: Slicer --no-main-window --python-code "import slicer.testing; \
slicer.testing.runUnitTest(['<path>/HILASegment/Testing/Python'], 'HILASegmentSelfTest')"
"""
import unittest

from HILASegment import HILASegmentTest


class HILASegmentSelfTest(HILASegmentTest):
    """The full loop (segment, edit, accept, train) as a unittest case ctest can discover."""


if __name__ == "__main__":
    unittest.main()
