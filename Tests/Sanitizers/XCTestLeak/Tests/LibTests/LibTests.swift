import Testing
import Lib
@Test func returnsOne() { #expect(Lib.one() == 1) }
