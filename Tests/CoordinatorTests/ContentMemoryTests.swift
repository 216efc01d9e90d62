import Testing
@testable import HatoCoordinator

@Suite("ContentMemory: one budget for the content all sessions hold")
struct ContentMemoryTests {
    @Test("reservations follow each session's content, refuse growth past the limit, and are released when dropped")
    func reservations() {
        let memory = ContentMemory(limit: 1000)
        var a: ContentMemory.Reservation? = ContentMemory.Reservation(memory)
        let b = ContentMemory.Reservation(memory)
        #expect(a!.update(to: 600))
        #expect(memory.reserved == 600)
        #expect(b.update(to: 300))
        #expect(!b.update(to: 500), "600 + 500 > 1000")
        #expect(b.octets == 300 && memory.reserved == 900)
        #expect(b.update(to: 0), "shedding releases")
        #expect(memory.reserved == 600)
        #expect(a!.update(to: 200, releasing: false), "kept while a message is being stored")
        #expect(memory.reserved == 600)
        #expect(a!.update(to: 0))
        #expect(memory.reserved == 0)
        #expect(a!.update(to: 700))
        a = nil
        #expect(memory.reserved == 0, "a session that ends gives its reservation back")
    }

    @Test("MAIL is admitted only when the declared SIZE (or 1 MiB) fits what is left")
    func admission() {
        let memory = ContentMemory(limit: 4 << 20)
        #expect(memory.admits(declaredSize: nil))
        #expect(memory.admits(declaredSize: 4 << 20))
        let r = ContentMemory.Reservation(memory)
        #expect(r.update(to: 3 << 20 + 1))
        #expect(!memory.admits(declaredSize: nil), "less than 1 MiB left")
        #expect(memory.admits(declaredSize: 1000))
        #expect(!memory.admits(declaredSize: 2 << 20))
        #expect(!memory.admits(declaredSize: 100 << 20), "a SIZE above the limit needs the whole budget")
    }
}
