import Foundation
let p = Process()
p.executableURL = URL(fileURLWithPath: "/bin/true")
try p.run()
p.waitUntilExit()
print("exit", p.terminationStatus)
